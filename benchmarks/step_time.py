"""Per-step cost of dst training against a hand-written dense JAX loop, measured side by side.

Model: MLP 784-1000-1000-1000-10, ERK 95% sparsity, batch 128, SGD with momentum 0.9. Every variant
runs the same number of steps as one jitted epoch over on-device data (500 steps by default: five
whole dT=100 periods, about one Fashion-MNIST epoch of 469 batches, so per-call costs are spread as in
training); rounds interleave the variants and each ratio is the median over rounds. Data are random
images of Fashion-MNIST's shape (timing does not depend on pixel values), so no data set is needed.

Prints ratios (targets from the issue in brackets):
* static step / hand-written dense step        [<= 1.10]
* SET, RigL (dT=100, averaged over dT) / static [<= 1.05]
* one RigL mask update / one training step     [<= 5]
* argsort-based RigL update / dst RigL update   [>= 20]

Run: ``.venv/bin/python benchmarks/step_time.py [--rounds 5] [--steps 500]``
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
from dst.models import set_mlp

BATCH = 128
SPARSITY = 0.95
LR, MOMENTUM = 0.01, 0.9


def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def hand_written_loop(params, steps):
    """Dense MLP training with nothing but jax.numpy: the reference dst is measured against."""
    names = sorted(params, key=lambda n: int(n.split("_")[1]))

    def forward(p, x):
        for i, name in enumerate(names):
            x = x @ p[name]["kernel"] + p[name]["bias"]
            if i < len(names) - 1:
                x = jnp.maximum(x, 0.0)
        return x

    def loss(p, x, y):
        logp = jax.nn.log_softmax(forward(p, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def run(p, velocity, x, y, key):
        order = jax.random.permutation(key, x.shape[0])[: steps * BATCH].reshape(steps, BATCH)

        def body(carry, idx):
            p, v = carry
            g = jax.grad(loss)(p, x[idx], y[idx])
            v = jax.tree_util.tree_map(lambda v, g: MOMENTUM * v + g, v, g)
            p = jax.tree_util.tree_map(lambda p, v: p - LR * v, p, v)
            return (p, v), None

        return jax.lax.scan(body, (p, velocity), order)[0]

    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)
    return lambda x, y, key: run(params, velocity, x, y, key)


def dst_loop(model, params, masks, algo, steps):
    tx = optax.sgd(LR, momentum=MOMENTUM)
    state = dst.create_train_state(jax.random.key(1), params, masks, tx, algo)
    epoch = dst.train_epoch_fn(dst.make_train_step(dst.flax_apply(model), tx, algo), BATCH)
    # Run exactly `steps` steps: hand the epoch function a data set of steps * BATCH examples.
    return lambda x, y, key: epoch(state, x[: steps * BATCH], y[: steps * BATCH], key)[0]


def argsort_rigl_update(params, masks, grads, drop_frac):
    """The same RigL topology update, selecting by full sorts (what a naive port does)."""

    def layer(w, m, g):
        n = jnp.sum(m)
        k = jnp.floor(drop_frac * n).astype(jnp.int32)
        flat_w, flat_m, flat_g = w.reshape(-1), m.reshape(-1), g.reshape(-1)
        rank_drop = jnp.argsort(jnp.where(flat_m, jnp.abs(flat_w), jnp.inf))
        drop = jnp.zeros_like(flat_m).at[rank_drop].set(jnp.arange(flat_m.size) < k)
        kept = flat_m & ~drop
        rank_grow = jnp.argsort(-jnp.where(kept, -jnp.inf, jnp.abs(flat_g)))
        grow = jnp.zeros_like(flat_m).at[rank_grow].set(jnp.arange(flat_m.size) < k)
        new_m = kept | grow
        return jnp.where(grow, 0.0, jnp.where(new_m, flat_w, 0.0)).reshape(w.shape), new_m.reshape(m.shape)

    out = {}
    for name in params:
        if params[name]["kernel"].ndim >= 2:
            w, m = layer(params[name]["kernel"], masks[name]["kernel"], grads[name]["kernel"])
            out[name] = w, m
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=500,
                        help="steps per timed epoch (a multiple of 100, so dT=100 periods are whole)")
    args = parser.parse_args()
    steps = args.steps

    model = set_mlp()
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    densities = dst.layer_densities(params, SPARSITY, "erk")
    masks = dst.init_masks(jax.random.key(2), params, densities)
    dense_masks = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    x = jax.random.normal(jax.random.key(3), (steps * BATCH, 784))
    y = jax.random.randint(jax.random.key(4), (steps * BATCH,), 0, 10)
    dyn = dict(update_every=100, end_step=10**6, drop_fraction=0.3)

    loops = {
        "hand-written dense": hand_written_loop(params, steps),
        "dst dense": dst_loop(model, params, dense_masks, dst.algorithms.make("dense"), steps),
        "static": dst_loop(model, params, masks, dst.algorithms.make("static"), steps),
        "set": dst_loop(model, params, masks, dst.algorithms.make("set", **dyn), steps),
        "rigl": dst_loop(model, params, masks, dst.algorithms.make("rigl", **dyn), steps),
    }

    # One RigL topology update alone, and the argsort version of it, on the same inputs.
    rigl = dst.algorithms.make("rigl", update_every=1, end_step=10**6, drop_fraction=0.3)
    grads = jax.tree_util.tree_map(lambda p: jax.random.normal(jax.random.key(5), p.shape), params)
    sparse_params = dst.apply_masks(params, masks)
    rigl_state = rigl.init(sparse_params, masks)
    rigl_update = jax.jit(lambda p, m, g, k: rigl.update(rigl_state, k, p, m, g)[:2])
    sort_update = jax.jit(lambda p, m, g: argsort_rigl_update(p, m, g, 0.3))

    for fn in loops.values():  # compile
        timed(fn, x, y, jax.random.key(6))
    timed(rigl_update, sparse_params, masks, grads, jax.random.key(7))
    timed(sort_update, sparse_params, masks, grads)

    per_step = {name: [] for name in loops}
    rigl_times, sort_times = [], []
    for r in range(args.rounds):
        for name, fn in loops.items():
            per_step[name].append(timed(fn, x, y, jax.random.key(100 + r)) / steps)
        for _ in range(3):
            rigl_times.append(timed(rigl_update, sparse_params, masks, grads, jax.random.key(200 + r)))
        sort_times.append(timed(sort_update, sparse_params, masks, grads))

    med = {name: statistics.median(v) for name, v in per_step.items()}
    print(f"machine: {platform.machine()} {platform.processor() or ''} devices={jax.devices()}"
          f" jax={jax.__version__}; {args.rounds} rounds x {steps} steps, median per step")
    for name, t in med.items():
        print(f"  {name:20s} {1e3 * t:8.3f} ms/step")
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(per_step[a], per_step[b]))
    rigl_update_t = statistics.median(rigl_times)
    sort_t = statistics.median(sort_times)
    print("ratios (median over rounds of side-by-side runs):")
    print(f"  static / hand-written dense   {ratio('static', 'hand-written dense'):6.3f}   target <= 1.10")
    print(f"  dst dense / hand-written dense {ratio('dst dense', 'hand-written dense'):6.3f}")
    print(f"  set / static (dT=100)          {ratio('set', 'static'):6.3f}   target <= 1.05")
    print(f"  rigl / static (dT=100)         {ratio('rigl', 'static'):6.3f}   target <= 1.05")
    print(f"  rigl update / train step       {rigl_update_t / med['static']:6.2f}   target <= 5"
          f"   ({1e3 * rigl_update_t:.1f} ms)")
    print(f"  argsort update / rigl update   {sort_t / rigl_update_t:6.1f}   target >= 20"
          f"   ({1e3 * sort_t:.0f} ms)")


if __name__ == "__main__":
    main()
