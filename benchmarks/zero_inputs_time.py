"""What skipping the weights of all-zero inputs saves: a stored train step with the skipping on and off.

The kernels' forward products and value gradients leave out the weights whose input is zero across the whole
batch (``dst/kernels/csrc/zero_inputs.h``; :func:`dst.kernels.skip_zero_inputs`). Two models, each stored on
csr, a static train step (the plain step every dynamic algorithm takes between its updates), SGD with momentum:

* ``lenet300``: the default experiment's model, data and sparsity (LeNet-300-100, real Fashion-MNIST, 90%
  ERK), first trained ``--train-steps`` steps (default 469: one epoch at batch 128) so that ReLU units that
  die in training are dead;
* ``wrn22_2``: WRN-22-2 on CIFAR-shaped random inputs at 95% uniform, every convolution stored, from
  initialisation (``--train-steps`` 0).

Per model: the share of the weights the kernels were given that they skipped (:func:`dst.kernels.
zero_input_counts`, over the timed steps), and per-step medians with the skipping on and off, rounds
interleaved, each timed step after an untimed one of the same variant, on the ISA in use (``DST_KERNELS_ISA``
to force another).

Run: ``.venv/bin/python benchmarks/zero_inputs_time.py [--models lenet300,wrn22_2] [--rounds 5]``
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
from dst import backends
from dst import kernels
from dst.models import build_model
from dst.train import stored

SETTINGS = {"lenet300": (0.9, "erk", 469, 128), "wrn22_2": (0.95, "uniform", 0, 128)}


def batches(name: str, batch: int):
    """An endless iterator of ``(x, y)`` batches: real Fashion-MNIST, or CIFAR-shaped random images."""
    if name == "lenet300":
        data = dst.data.load("fashion_mnist")
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300,wrn22_2")
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
        sparsity, distribution, train_steps, batch = SETTINGS[name]
        train_steps = train_steps if args.train_steps is None else args.train_steps
        feed = batches(name, batch)
        x0 = next(feed)[0]
        model = build_model(name, num_classes=10)
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
