"""What skipping the weights of all-zero inputs saves: a stored train step with the skipping on and off.

The kernels' forward products and value gradients leave out the weights whose input is zero across the whole
batch (``dst/kernels/csrc/zero_inputs.h``; :func:`dst.kernels.skip_zero_inputs`). Two models, each stored on
csr, a static train step (the plain step every dynamic algorithm takes between its updates), SGD with momentum:

* ``lenet300``: the default experiment's model, data and sparsity (LeNet-300-100, real Fashion-MNIST, 90%
  ERK), first trained ``--train-steps`` steps (default 469: one epoch at batch 128) so that ReLU units that
  die in training are dead; its inputs standardised as the experiment has them (a blank pixel is then not
  zero); ``lenet300_unit``: the same with pixels / 255 (``dataset.normalize=unit``: blank pixels are zeros);
* ``wrn22_2``: WRN-22-2 on CIFAR-shaped random inputs at 95% uniform, every convolution stored, from
  initialisation (``--train-steps`` 0);
* ``half_dead``: one 4000 x 4000 layer at 10%, batch 128, half of its inputs zero across the batch: its
  forward product and value gradient alone (seconds per call, not per step).

Per model: the share of the weights the kernels were given that they skipped (:func:`dst.kernels.
zero_input_counts`, over the timed steps), and per-step medians with the skipping on and off, rounds
interleaved, each timed step after an untimed one of the same variant, on the ISA in use (``DST_KERNELS_ISA``
to force another).

Skipping pays only where many inputs are zero (``SkippingPays`` in ``zero_inputs.h``: a quarter of a layer's
inputs or more); elsewhere the kernels scan the input and run the whole structure.

Run: ``.venv/bin/python benchmarks/zero_inputs_time.py [--models lenet300,lenet300_unit,wrn22_2] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dst
import dst.data
from dst import backends
from dst import kernels
from dst.models import build_model
from dst.train import stored

SETTINGS = {"lenet300": (0.9, "erk", 469, 128), "lenet300_unit": (0.9, "erk", 469, 128),
            "wrn22_2": (0.95, "uniform", 0, 128)}


def batches(name: str, batch: int):
    """An endless iterator of ``(x, y)`` batches: real Fashion-MNIST, or CIFAR-shaped random images."""
    if name.startswith("lenet300"):   # unit: pixels / 255, so blank pixels are exact zeros (standard: not)
        data = dst.data.load("fashion_mnist", normalize="unit" if name.endswith("unit") else "standard")
        x, y = data.train_x.reshape(len(data.train_x), -1), data.train_y
    else:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8 * batch, 32, 32, 3)).astype(np.float32)
        y = rng.integers(0, 10, len(x))
    step = 0
    while True:
        start = (step * batch) % (len(x) - batch + 1)
        yield jnp.asarray(x[start:start + batch]), jnp.asarray(y[start:start + batch])
        step += 1


def timed_steps(step, state, fixed, skip: bool):
    """``(state, seconds per step)`` over the ``fixed`` batches with the skipping ``skip``, after one untimed
    step (the other variant's leftovers)."""
    kernels.skip_zero_inputs(skip)
    state = step(state, fixed[0])[0]
    start = time.perf_counter()
    for b in fixed:
        state, metrics = step(state, b)
    jax.block_until_ready(metrics)
    return state, (time.perf_counter() - start) / len(fixed)


def half_dead_layer(rounds: int, calls: int = 20):
    """A 4000 x 4000 layer at 10% density, batch 128, half of its inputs zero across the batch (a layer after
    ReLUs half of which are dead): forward product and value gradient, skipping on and off."""
    rng = np.random.default_rng(0)
    n, nnz = 4000, 1_600_000
    cols = np.sort(rng.integers(0, n, nnz).reshape(n, -1), axis=1).reshape(-1).astype(np.int32)
    rowptr = (np.arange(n + 1) * (nnz // n)).astype(np.int32)
    values = jnp.asarray(rng.standard_normal(nnz).astype(np.float32))
    x = rng.standard_normal((128, n)).astype(np.float32)
    x[:, : n // 2] = 0.0
    x, g = jnp.asarray(x), jnp.asarray(rng.standard_normal((128, n)).astype(np.float32))

    def product(v):
        y, pullback = jax.vjp(lambda vv: kernels.csr_matmul(x, vv, cols, rowptr), v)
        return y, pullback(g)[0]

    product = jax.jit(product)
    times = {True: [], False: []}
    counts = (0, 0)
    for _ in range(rounds):
        for skip in (True, False):
            kernels.skip_zero_inputs(skip)
            jax.block_until_ready(product(values))
            kernels.zero_input_counts()
            start = time.perf_counter()
            for _ in range(calls):
                out = product(values)
            jax.block_until_ready(out)
            times[skip].append((time.perf_counter() - start) / calls)
            counts = kernels.zero_input_counts() if skip else counts
    kernels.skip_zero_inputs(True)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    ratio = statistics.median(b / a for a, b in zip(times[True], times[False]))
    print(f"| 4000x4000 layer, half its inputs dead | 10% random | - | {counts[1] / max(counts[0], 1):.2%} | "
          f"{on:.4f} | {off:.4f} | {ratio:.3f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300,lenet300_unit,wrn22_2,half_dead")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    parser.add_argument("--train-steps", type=int, default=None, help="steps before timing (default per model)")
    args = parser.parse_args()
    kernels.require("benchmark")
    print(f"# {platform.machine()}, {kernels.status()}; static csr train step, {args.rounds} rounds of "
          f"{args.steps} steps per variant, medians")
    print("| model | setting | trained steps | weights skipped | skip on s/step | skip off s/step | off / on |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        if name == "half_dead":
            half_dead_layer(args.rounds)
            continue
        sparsity, distribution, train_steps, batch = SETTINGS[name]
        train_steps = train_steps if args.train_steps is None else args.train_steps
        feed = batches(name, batch)
        x0 = next(feed)[0]
        model = build_model(name.split("_unit")[0], num_classes=10)
        variables = model.init(jax.random.key(0), x0[:1])
        params = variables["params"]
        model_state = {k: v for k, v in variables.items() if k != "params"}
        layers = dst.sparsifiable_layers(params)
        masks = dst.init_masks(jax.random.key(3), params, dst.layer_densities(params, sparsity, distribution))
        geometries, _ = backends.convolutions(model, x0[:1], layers)
        storage = stored.make_storage(model, "csr", masks, layers, convolutions=geometries)
        algo, tx = dst.algorithms.make("static"), optax.sgd(0.05, momentum=0.9)
        step = jax.jit(dst.make_train_step(None, tx, algo, storage=storage).full, donate_argnums=0)
        state = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, model_state, storage=storage)
        for _ in range(train_steps):
            state = step(state, next(feed))[0]
        fixed = [next(feed) for _ in range(args.steps)]
        times = {True: [], False: []}
        kernels.zero_input_counts()
        counts = [0, 0]

        for _ in range(args.rounds):
            for skip in (True, False):
                kernels.zero_input_counts()
                state, seconds = timed_steps(step, state, fixed, skip)
                times[skip].append(seconds)
                if skip:
                    weights, skipped = kernels.zero_input_counts()
                    counts[0] += weights
                    counts[1] += skipped
        kernels.skip_zero_inputs(True)
        on, off = statistics.median(times[True]), statistics.median(times[False])
        ratio = statistics.median(b / a for a, b in zip(times[True], times[False]))
        print(f"| {name} | {sparsity:.0%} {distribution} | {train_steps} | {counts[1] / max(counts[0], 1):.2%} | "
              f"{on:.4f} | {off:.4f} | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
