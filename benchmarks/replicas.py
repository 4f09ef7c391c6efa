"""Seeds in one program: per-step time of K vmapped replicas against one run, and what batching the
schedule would cost (vmap turns the update's lax.cond into a select that runs it every step).

Model: LeNet-300-100 at 90% ERK with RigL (dT=100), batch 128, SGD with momentum, random data of
Fashion-MNIST's shape; 500-step epochs as one jitted call; rounds interleaved, medians reported.

Run: ``.venv/bin/python benchmarks/replicas.py [--replicas 4] [--rounds 5] [--steps 500]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import dst
from dst.models import lenet300
from dst.train.epoch import epoch_body
from dst.train.replicas import replicated_epoch_fn
from dst.train.replicas import stack_replicas

BATCH = 128


def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    k, n = args.replicas, args.steps * BATCH

    model = lenet300()
    tx = optax.sgd(0.05, momentum=0.9)
    algo = dst.algorithms.make("rigl", update_every=100, end_step=10**6, drop_fraction=0.3)
    step = dst.make_train_step(dst.flax_apply(model), tx, algo)

    def start(seed):
        params = model.init(jax.random.key(seed), jnp.zeros((1, 784)))["params"]
        masks = dst.init_masks(jax.random.key(100 + seed), params, dst.layer_densities(params, 0.9, "erk"))
        return dst.create_train_state(jax.random.key(200 + seed), params, masks, tx, algo)

    x = jax.random.normal(jax.random.key(1), (n, 784))
    y = jax.random.randint(jax.random.key(2), (n,), 0, 10)
    states = [start(s) for s in range(k)]
    stacked = stack_replicas(states)
    keys = jnp.stack([jax.random.key(s) for s in range(k)])
    index = jnp.stack([jnp.arange(n)] * k)
    batched = jax.tree_util.tree_map(lambda v: jnp.stack([v] * k) if jnp.ndim(v) == 0 else v, stacked)

    one = dst.train_epoch_fn(step, BATCH)
    shared = replicated_epoch_fn(step, BATCH)
    selects = jax.jit(jax.vmap(epoch_body(step, BATCH), in_axes=(0, None, None, 0, 0)))
    runs = {
        "one run": lambda: one(states[0], x, y, keys[0]),
        f"{k} replicas, shared schedule": lambda: shared(stacked, x, y, keys, index),
        f"{k} replicas, batched schedule": lambda: selects(batched, x, y, keys, index),
    }
    for fn in runs.values():
        timed(fn)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn) / args.steps)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"machine: {platform.machine()} devices={jax.devices()} jax={jax.__version__}; "
          f"{args.rounds} rounds x {args.steps} steps, batch {BATCH}")
    for name, t in med.items():
        print(f"  {name:32s} {1e3 * t:8.3f} ms/step")
    ratio = lambda a, b: statistics.median(p / q for p, q in zip(times[a], times[b]))
    names = list(runs)
    print(f"  {k} replicas / one run (per step)            {ratio(names[1], names[0]):6.2f}"
          f"   (throughput {k / ratio(names[1], names[0]):.2f}x of separate runs)")
    print(f"  batched schedule / shared schedule          {ratio(names[2], names[1]):6.2f}")


if __name__ == "__main__":
    main()
