"""Per-step cost of dst training of a BatchNorm conv net against a hand-written Flax + Optax loop.

Model: WRN-22-2 (dst.models.wrn22_2), CIFAR-shaped random data (32x32x3, 10 classes), batch 128,
SGD with Nesterov momentum 0.9 and L2 5e-4 (RigL's CIFAR setup), ERK at 90%. The hand-written loop
uses only flax.linen and optax (no dst code): BatchNorm in training mode, `mutable=["batch_stats"]`.

Both loops run the way dst runs this model on this backend (``trainer.epoch_loop=auto``): on CPU one
jitted dispatch per step (XLA CPU runs convolutions inside loop bodies far slower, jax#12868), on
GPU/TPU a ``lax.scan`` over the epoch's steps. Rounds interleave the variants; ratios are medians.

Prints (targets in brackets):
* static step / hand-written dense step          [<= 1.10]
* RigL (dT=100, averaged over dT) / static        [<= 1.05]
* one RigL mask update / one training step        [<= 5]

Run: ``.venv/bin/python benchmarks/wrn_step_time.py [--rounds 3] [--steps 100]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import optax

import dst
from dst.app.build import epoch_loop
from dst.models import build_model

BATCH = 128
SPARSITY = 0.9


def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def optimizer():
    return optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9, nesterov=True))


def hand_written(model, variables, x, y, steps, loop):
    """Dense WRN training with flax.linen + optax only: the reference dst is measured against."""
    tx = optimizer()

    def step(carry, idx):
        params, stats, opt_state = carry

        def loss_fn(p):
            logits, new = model.apply({"params": p, "batch_stats": stats}, x[idx], train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean(), new["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    start = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    order = lambda key: jax.random.permutation(key, x.shape[0])[: steps * BATCH].reshape(steps, BATCH)
    if loop == "scan":
        run = jax.jit(lambda carry, key: jax.lax.scan(step, carry, order(key))[0])
        return lambda key: run(start, key)
    one = jax.jit(step)

    def run(key):
        carry = start
        for idx in order(key):
            carry, _ = one(carry, idx)
        return carry

    return run


def dst_loop(model, variables, masks, algo, x, y, steps, loop):
    tx = optimizer()
    params, model_state = variables["params"], {"batch_stats": variables["batch_stats"]}
    state = dst.create_train_state(jax.random.key(1), params, masks, tx, algo, model_state)
    epoch = dst.train_epoch_fn(dst.make_train_step(dst.flax_apply(model), tx, algo), BATCH, loop=loop)
    return lambda key: epoch(state, x[: steps * BATCH], y[: steps * BATCH], key)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="steps per timed epoch (a multiple of 100)")
    args = parser.parse_args()
    steps = args.steps

    model = build_model("wrn22_2", num_classes=10)
    x = jax.random.normal(jax.random.key(3), (steps * BATCH, 32, 32, 3))
    y = jax.random.randint(jax.random.key(4), (steps * BATCH,), 0, 10)
    variables = dict(model.init(jax.random.key(0), x[:1]))
    params = variables["params"]
    masks = dst.init_masks(jax.random.key(2), params, dst.layer_densities(params, SPARSITY, "erk"))
    loop = epoch_loop("auto", convolutional=True)
    dyn = dict(update_every=100, end_step=10**6, drop_fraction=0.3)
    loops = {
        "hand-written dense": hand_written(model, variables, x, y, steps, loop),
        "static": dst_loop(model, variables, masks, dst.algorithms.make("static"), x, y, steps, loop),
        "rigl": dst_loop(model, variables, masks, dst.algorithms.make("rigl", **dyn), x, y, steps, loop),
    }

    # One RigL topology update alone, on the same masks with a dense gradient of the right shapes.
    rigl = dst.algorithms.make("rigl", update_every=1, end_step=10**6, drop_fraction=0.3)
    grads = jax.tree_util.tree_map(lambda p: jax.random.normal(jax.random.key(5), p.shape), params)
    sparse = dst.apply_masks(params, masks)
    rigl_state = rigl.init(sparse, masks)
    rigl_update = jax.jit(lambda p, m, g, k: rigl.update(rigl_state, k, p, m, g)[:2])

    for fn in loops.values():  # compile (and warm up)
        timed(fn, jax.random.key(6))
    timed(rigl_update, sparse, masks, grads, jax.random.key(7))

    per_step = {name: [] for name in loops}
    update_times = []
    for r in range(args.rounds):
        for name, fn in loops.items():
            per_step[name].append(timed(fn, jax.random.key(100 + r)) / steps)
        for _ in range(3):
            update_times.append(timed(rigl_update, sparse, masks, grads, jax.random.key(200 + r)))

    med = {name: statistics.median(v) for name, v in per_step.items()}
    print(f"machine: {platform.machine()} {platform.processor() or ''} devices={jax.devices()} "
          f"jax={jax.__version__}; epoch loop: {loop}; {args.rounds} rounds x {steps} steps, batch {BATCH}")
    for name, t in med.items():
        print(f"  {name:20s} {1e3 * t:9.1f} ms/step")
    ratio = lambda a, b: statistics.median(p / q for p, q in zip(per_step[a], per_step[b]))
    update = statistics.median(update_times)
    print("ratios (median over rounds of side-by-side runs):")
    print(f"  static / hand-written dense  {ratio('static', 'hand-written dense'):6.3f}   target <= 1.10")
    print(f"  rigl / static (dT=100)       {ratio('rigl', 'static'):6.3f}   target <= 1.05")
    print(f"  rigl update / train step     {update / med['static']:6.3f}   target <= 5   ({1e3 * update:.1f} ms)")


if __name__ == "__main__":
    main()
