"""An algorithm's update step on csr against masked; for RigL, the layer-at-a-time stored update against the dense view.

The model is an MLP 784-W-W-W-10, batch 128, SGD with momentum, constant fan-in masks. RigL runs with
``update_every=1``, so every step is an update step (the ``full`` program: forward, backward, the dense
weight gradient as RigL's grow score, drop, grow, new topology, moments moved). Variants:

* ``masked``: the dense masked step;
* ``csr view``: csr storage updated on the dense view of all its layers at once (the path before
  :mod:`dst.train.stored_update`; SRigL and condensed still take it);
* ``csr native``: csr storage updated from storage, one layer at a time, the grow score in blocks.

Per-step times are medians over rounds that interleave the variants; memory is the compiled update
step's ``memory_analysis()`` (arguments + temporaries, MiB). ``--no-dense-above W`` skips the masked
and dense-view variants above width W (their dense arrays would not fit), reporting their compiled
memory only.

``--algorithm srigl`` times SRigL (its ablation at ``min_salient_fraction=0.3``) in RigL's three variants;
``--algorithm gmp|granet|snfs|topkast`` times that algorithm's update at every step instead (GMP and GraNet
pruning a little at each step from the given density towards half of it, GraNet regrowing 30% after; SNFS
moving weights between layers with its default capacity of 2 slots per starting weight; Top-KAST's forward
set at the density, its backward set at twice it): ``masked`` against ``csr``, the path a run of it takes.

The csr variants run once per kernel instruction set (``--isas``, switched between calls with
:func:`dst.kernels.use_isa`), beside the same masked times.

``--plain`` times the step between updates instead (the quiet path's plain step: no update).

Run: ``.venv/bin/python benchmarks/stored_update_time.py [--widths 4000] [--densities 0.1,0.01] [--isas avx512,avx2]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import optax
from backend_step_time import fan_in_mlp  # this directory: run as a script

import dst
from dst import kernels
from dst.train import stored
from dst.train import stored_update

BATCH = 128


def algorithm(name, density):
    """``name``'s algorithm updating at every step."""
    if name in ("gmp", "granet"):
        return dst.algorithms.make(name, sparsity=1 - density / 2, initial_sparsity=1 - density, update_every=1,
                                   end_step=10**6, **({"drop_fraction": 0.3} if name == "granet" else {}))
    if name == "topkast":     # forward set at the density, backward set at twice it
        return dst.algorithms.make(name, sparsity=1 - density, backward_sparsity=1 - 2 * density, update_every=1,
                                   end_step=10**6)
    structure = {"structure": dst.structures.fan_in()} if name == "srigl" else {}
    return dst.algorithms.make(name, update_every=1, end_step=10**6, drop_fraction=0.3, **structure)


def build(width, density, variant, name="rigl", program="full"):
    model, params, layers, masks = fan_in_mlp(width, density)
    tx = optax.sgd(0.01, momentum=0.9)
    algo = algorithm(name, density)
    storage = None if variant == "masked" else stored.make_storage(model, "csr", stored.held_masks(algo, params, masks),
                                                                  layers, capacity=stored.default_capacity(algo))
    native = stored_update.unsupported
    if variant == "csr view":      # the dense-view path, for comparison
        stored_update.unsupported = lambda algo, storage: "forced by the benchmark"
    try:
        step = jax.jit(getattr(dst.make_train_step(dst.flax_apply(model), tx, algo, storage=storage), program),
                       donate_argnums=0)
        state = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, storage=storage)
        x = jax.random.normal(jax.random.key(2), (BATCH, 784))
        y = jax.random.randint(jax.random.key(3), (BATCH,), 0, 10)
        compiled = step.lower(state, (x, y)).compile()
    finally:
        stored_update.unsupported = native
    memory = compiled.memory_analysis()
    mib = (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**20
    return compiled, state, (x, y), mib


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="4000")
    parser.add_argument("--densities", default="0.1,0.01")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-dense-above", type=int, default=10_000)
    parser.add_argument("--algorithm", default="rigl", choices=("rigl", "srigl", "gmp", "granet", "snfs", "topkast"))
    parser.add_argument("--plain", action="store_true",
                        help="time the step between updates instead (the quiet path's plain step)")
    parser.add_argument("--isas", default=None,
                        help="kernel instruction sets for the csr variants (default: every one this CPU runs but "
                             "the portable fallback)")
    args = parser.parse_args()
    kernels.require("benchmark")
    isas = args.isas.split(",") if args.isas else [i for i in kernels.runnable_isas() if i != "generic"] or ["generic"]
    print(f"machine: {platform.machine()} {platform.processor() or ''} devices={jax.devices()} "
          f"jax={jax.__version__}; MLP 784-W-W-W-10, batch {BATCH}, {args.algorithm} "
          f"{'plain step (no update)' if args.plain else 'update at every step'}, "
          f"{args.rounds} rounds, medians; kernels {kernels.status()}")
    print(f"{'width':>6s} {'density':>8s} {'variant':>11s} {'isa':>7s} {'ms/step' if args.plain else 'ms/update':>10s} "
          f"{'MiB':>8s}")
    for width in (int(w) for w in args.widths.split(",")):
        for density in (float(d) for d in args.densities.split(",")):
            names = ["masked", "csr view", "csr native"] if width <= args.no_dense_above else ["csr native"]
            if args.algorithm not in ("rigl", "srigl"):   # the path its run takes
                names = ["masked", "csr"]
            runs = {}
            for name in names:
                compiled, state, batch, mib = build(width, density, name, args.algorithm,
                                                    "plain" if args.plain else "full")
                state, _ = compiled(state, batch)    # warm
                runs[name] = [compiled, state, batch, mib]
            timings = {(name, isa): [] for name in runs for isa in (["-"] if name == "masked" else isas)}
            for _ in range(args.rounds):
                for name, isa in timings:
                    run = runs[name]
                    if isa != "-":
                        kernels.use_isa(isa)
                    start = time.perf_counter()
                    run[1], metrics = run[0](run[1], run[2])
                    jax.block_until_ready(metrics)
                    timings[(name, isa)].append(time.perf_counter() - start)
                    assert bool(metrics["updated"]) != args.plain
            for (name, isa), seconds in timings.items():
                print(f"{width:6d} {density:8.3%} {name:>11s} {isa:>7s} {1e3 * statistics.median(seconds):10.1f} "
                      f"{runs[name][3]:8.0f}", flush=True)
            del runs


if __name__ == "__main__":
    main()
