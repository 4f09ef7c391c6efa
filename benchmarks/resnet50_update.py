"""Mask-update cost at ResNet-50 scale: one RigL update over all ResNet-50 kernels against one training
step at batch 32 (224x224 images, the host-loop step dst uses for conv nets on CPU), and against the same
update done with ``jnp.argsort``. ERK at 90% with the stem conv dense (RigL's ImageNet setup).

Run: ``.venv/bin/python benchmarks/resnet50_update.py [--rounds 3]``
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
from dst.models import build_model

BATCH = 32


def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def argsort_update(params, masks, grads, names, frac=0.3):
    """RigL's drop-and-grow on every sparse kernel with full sorts (what a naive port does)."""
    out = {}
    flat_p, flat_m, flat_g = (dst.masks.named_leaves(t) for t in (params, masks, grads))
    for n in names:
        w, m, g = flat_p[n].reshape(-1), flat_m[n].reshape(-1), flat_g[n].reshape(-1)
        k = jnp.floor(frac * jnp.sum(m)).astype(jnp.int32)
        drop = jnp.zeros_like(m).at[jnp.argsort(jnp.where(m, jnp.abs(w), jnp.inf))].set(jnp.arange(m.size) < k)
        kept = m & ~drop
        grow = jnp.zeros_like(m).at[jnp.argsort(jnp.where(kept, jnp.inf, -jnp.abs(g)))].set(jnp.arange(m.size) < k)
        out[n] = kept | grow
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = build_model("resnet50", num_classes=1000)
    x = jax.random.normal(jax.random.key(0), (BATCH, 224, 224, 3))
    y = jax.random.randint(jax.random.key(1), (BATCH,), 0, 1000)
    params, model_state = dst.init_model(model, jax.random.key(2), x[:1])
    densities = dst.layer_densities(params, 0.9, "erk", dense_layers=["^stem_conv/"])
    masks = dst.init_masks(jax.random.key(3), params, densities)
    tx = optax.sgd(0.1, momentum=0.9)
    static = dst.algorithms.make("static")
    state = dst.create_train_state(jax.random.key(4), params, masks, tx, static, model_state)
    step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, static))
    rigl = dst.algorithms.make("rigl", update_every=1, end_step=10**6, drop_fraction=0.3)
    grads = jax.tree_util.tree_map(lambda p: jax.random.normal(jax.random.key(5), p.shape), params)
    sparse = dst.apply_masks(params, masks)
    rigl_state = rigl.init(sparse, masks)
    update = jax.jit(lambda p, m, g, k: rigl.update(rigl_state, k, p, m, g)[:2])
    sort = jax.jit(lambda p, m, g: argsort_update(p, m, g, list(densities)))
    timed(step, state, (x, y))
    timed(update, sparse, masks, grads, jax.random.key(6))
    timed(sort, sparse, masks, grads)
    t_step, t_update, t_sort = [], [], []
    for r in range(args.rounds):
        t_step.append(timed(step, state, (x, y)))
        t_update.append(timed(update, sparse, masks, grads, jax.random.key(10 + r)))
        t_sort.append(timed(sort, sparse, masks, grads))
    med = statistics.median
    n_sparse = sum(int(jnp.size(dst.masks.named_leaves(params)[n])) for n in densities)
    print(f"machine: {platform.machine()} devices={jax.devices()} jax={jax.__version__}; {args.rounds} rounds; "
          f"{len(densities)} sparse kernels, {n_sparse:,} weights")
    print(f"  train step (batch {BATCH})   {med(t_step):8.3f} s")
    print(f"  one RigL update         {med(t_update):8.3f} s   = {med(t_update) / med(t_step):.3f} train steps")
    print(f"  argsort update          {med(t_sort):8.3f} s   = {med(t_sort) / med(t_update):.1f}x the dst update")


if __name__ == "__main__":
    main()
