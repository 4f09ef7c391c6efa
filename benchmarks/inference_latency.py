"""Inference latency of an exported sparse model: dense and masked against csr and condensed.

An MLP 784-W-W-W-10 (``--width``, default 4000), or WRN-22-2 on CIFAR-shaped inputs (``--model wrn22_2``:
every convolution and the classifier stored, the convolutions on the kernels' sparse convolution), with
constant fan-in masks at each density is exported
with :func:`dst.export.export_model` and loaded back with :func:`dst.load_exported` (the real path of
``dst-export`` files). Timed per call, medians over ``--calls`` calls after a warm-up, at batch 1 (where
the compiled kernels' sparse matrix-vector product) and batch 256 (their batched products):

* ``dense``: the model with every weight (what a dense network costs);
* ``masked``: the dense kernels with zeros off their masks, applied once (a masked run exported
  ``--format dense``);
* ``csr``, ``condensed``: the exported files.

Run: ``.venv/bin/python benchmarks/inference_latency.py [--width 4000] [--densities 0.1,0.05,0.01]``
or ``.venv/bin/python benchmarks/inference_latency.py --model wrn22_2 --densities 0.1,0.05 --calls 5``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import dst
from dst import backends
from dst import kernels
from dst import structures
from dst.export import export_model
from dst.models import build_model


def latency(fn, x, calls):
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mlp", choices=("mlp", "wrn22_2"))
    parser.add_argument("--width", type=int, default=4000, help="the MLP's hidden width")
    parser.add_argument("--densities", default="0.1,0.05,0.01")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--batches", default="1,256")
    parser.add_argument("--isas", default=None,
                        help="kernel instruction sets to time, e.g. avx512,avx2 (default: every one this CPU runs "
                             "but the portable fallback)")
    args = parser.parse_args()
    kernels.require("benchmark")
    isas = args.isas.split(",") if args.isas else [i for i in kernels.runnable_isas() if i != "generic"] or ["generic"]
    if args.model == "mlp":
        model_cfg, example, title = {"name": "mlp", "hidden": [args.width] * 3}, (784,), f"MLP 784-{args.width}x3-10"
    else:
        model_cfg, example, title = {"name": args.model}, (32, 32, 3), "WRN-22-2 on 32x32x3"
    model = build_model(**model_cfg, num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1,) + example))
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    layers = dst.sparsifiable_layers(params)
    convolutions, kept = backends.convolutions(model, jnp.zeros((1,) + example), layers)
    dense_fn = jax.jit(lambda x: model.apply({"params": params, **model_state}, x))
    print(f"machine: {platform.machine()} {platform.processor() or ''} devices={jax.devices()} "
          f"jax={jax.__version__}; kernels {kernels.status()}; {title}, constant fan-in masks, "
          f"{len(convolutions)} convolutions stored{f' ({len(kept)} dense)' if kept else ''}, "
          f"median of {args.calls} calls")
    print(f"{'density':>8s} {'batch':>6s} {'isa':>7s} {'dense ms':>9s} {'masked ms':>10s} {'csr ms':>8s} "
          f"{'cond. ms':>9s} {'dense/csr':>10s} {'dense/cond.':>12s}")
    fan = structures.fan_in()
    for density in (float(d) for d in args.densities.split(",")):
        shapes = {n: tuple(np.shape(leaf)) for n, leaf in dst.masks.named_leaves(params).items()}
        densities = {n: fan.round_density(shapes[n], density) for n in layers}
        masks = dst.init_masks(jax.random.key(1), params, densities, structure=fan)
        masked_params = dst.apply_masks(params, masks)   # once, as a masked run's export holds them
        masked_fn = jax.jit(lambda x, p=masked_params: model.apply({"params": p, **model_state}, x))
        loaded = {}
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in ("csr", "condensed"):
                path = f"{tmp}/{fmt}.npz"
                export_model(path, fmt, model_cfg, 10, params, masks, model_state, layers, convolutions)
                loaded[fmt] = dst.load_exported(path)
        for batch in (int(b) for b in args.batches.split(",")):
            x = jax.random.normal(jax.random.key(2), (batch,) + example)
            base = {name: latency(fn, x, args.calls) for name, fn in (("dense", dense_fn), ("masked", masked_fn))}
            for isa in isas:
                kernels.use_isa(isa)
                t = {**base, **{fmt: latency(loaded[fmt], x, args.calls) for fmt in ("csr", "condensed")}}
                print(f"{density:8.1%} {batch:6d} {isa:>7s} {1e3 * t['dense']:9.3f} {1e3 * t['masked']:10.3f} "
                      f"{1e3 * t['csr']:8.3f} {1e3 * t['condensed']:9.3f} {t['dense'] / t['csr']:10.2f} "
                      f"{t['dense'] / t['condensed']:12.2f}", flush=True)


if __name__ == "__main__":
    main()
