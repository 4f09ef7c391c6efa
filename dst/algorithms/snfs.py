"""Sparse momentum (SNFS, Dettmers & Zettlemoyer 2019): momentum growth and layer redistribution."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from dst import schedules
from dst.algorithms.accounting import dense_gradient_every_step
from dst.algorithms.accounting import windowed
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import check_schedule
from dst.algorithms.base import grow_values
from dst.algorithms.base import initial_state
from dst.algorithms.base import magnitude_drop
from dst.algorithms.base import no_growth
from dst.distributions import default_sparsifiable
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.selection import top_k_mask
from dst.structures import UNSTRUCTURED
from dst.structures import Structure


def allocate(total, weights, capacity, key):
    """Split the integer ``total`` over layers in proportion to ``weights``, never above ``capacity``.

    A layer whose share reaches its capacity is capped and the rest is shared again among the others
    (at most one round per layer). The shares are then made integers by flooring and handing the
    remainder, one each, to the layers with the largest fractional parts (ties from ``key``), so the
    result sums to exactly ``min(total, sum(capacity))``. Layers of zero weight share only what
    cannot go elsewhere, equally.
    """
    capacity = capacity.astype(jnp.float32)
    total = jnp.minimum(total.astype(jnp.float32), jnp.sum(capacity))
    fixed = jnp.zeros_like(capacity)          # capped shares
    free = capacity > 0
    share = jnp.zeros_like(capacity)
    for _ in range(capacity.shape[0]):
        remaining = total - jnp.sum(fixed)
        w = jnp.where(free, weights, 0.0)
        positive = jnp.sum(w) > 0
        w = jnp.where(positive, w, free.astype(jnp.float32))
        share = jnp.where(free, remaining * w / jnp.maximum(jnp.sum(w), 1e-30), 0.0)
        over = free & (share >= capacity)
        fixed = jnp.where(over, capacity, fixed)
        free = free & ~over
    floats = fixed + jnp.where(free, share, 0.0)
    base = jnp.floor(floats)
    remainder = jnp.round(total - jnp.sum(base)).astype(jnp.int32)
    room = base < capacity
    bonus = top_k_mask(floats - base, room, remainder, key)
    return (base + bonus).astype(jnp.int32)


class MomentumRules(NamedTuple):
    """What SNFS's update does, for callers that hold a layer in another form than a dense array (the
    stored layers update from storage, :mod:`dst.train.stored_momentum`): every step the momentum
    ``m <- momentum m + (1 - momentum) g`` of the dense gradient; at the steps where ``due(step)``, the
    layers that ``updates(name, shape)`` takes (the ``i``-th of them keyed by ``fold_in(key, i)``) drop
    their ``int(fraction(step) n)`` smallest ``|w|`` (a layer with every weight active stays out), the
    total is shared by :func:`allocate` (keyed by the first half of ``split(fold_in(key, len(layers)))``)
    in proportion to each layer's mean ``|m|`` over its active weights, and layer ``i`` grows its share at
    the largest ``|m|`` outside what it kept, keyed by the first half of ``split(fold_in(k_grow, i))``
    (``k_grow`` the second half above), its new weights ``grow_init``."""

    momentum: float
    due: Callable
    fraction: Callable
    updates: Callable
    structure: Structure
    grow_init: str


def snfs(*, update_every: int, end_step: int, start_step: int = 0, drop_fraction: float = 0.5,
         final_drop_fraction: float = 0.005, drop_schedule: str = "cosine", momentum: float = 0.9,
         grow_init: str = "zeros", sparsifiable=None, structure=None) -> SparseAlgorithm:
    """Sparse momentum.

    Every step the momentum ``m <- beta m + (1 - beta) g`` of the dense gradient is updated
    (``beta = momentum``). At each update, with ``p(t) = p_f + (p_0 - p_f)/2 (1 + cos(pi t / T))``
    (``p_0 = drop_fraction``, ``p_f = final_drop_fraction``; ``constant``/``linear`` also accepted):

    1. every sparse layer with ``n_l`` active weights drops its ``int(p(t) n_l)`` smallest ``|w|``;
       ``K`` is the total dropped;
    2. the layers' growth budgets are ``K`` split in proportion to the mean ``|m|`` over each layer's
       active weights (before the drop), capped at each layer's room (its inactive count) with the
       excess spilled to the other layers, and made integers that sum to exactly ``K``;
    3. each layer grows its budget at the inactive weights of largest ``|m|``, initialised to zero.

    The total active count is preserved exactly; per-layer counts move with the momentum. Under
    ``structure=block`` every count above is in whole blocks: whole blocks of smallest L1 ``|w|`` drop,
    budgets are split in blocks, and the blocks of largest summed ``|m|`` grow.

    References:
        Dettmers & Zettlemoyer 2019, "Sparse Networks from Scratch: Faster Training without Losing
        Performance", arXiv:1907.04840.

    Example::

        algo = dst.algorithms.make("snfs", update_every=100, end_step=5000)
    """
    structure = structure or UNSTRUCTURED
    if structure.name in ("n_m", "fan_in"):
        raise ValueError(f"structure={structure.name} cannot be kept by SNFS: it moves weights between layers, and a "
                         f"layer's count under {structure.name} is fixed by its groups (N/M, or one fan-in per unit "
                         "for all units); use structure=unstructured or block.")
    check_schedule(update_every, start_step, end_step, drop_fraction, drop_schedule)
    if not 0.0 <= final_drop_fraction <= drop_fraction:
        raise ValueError(f"final_drop_fraction must be in [0, drop_fraction={drop_fraction}]; got "
                         f"{final_drop_fraction!r}.")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1); got {momentum!r}.")
    keep_leaf = sparsifiable or default_sparsifiable
    due_at = lambda step: schedules.is_update_step(step, update_every, start_step, end_step)
    updates_leaf = lambda name, shape: keep_leaf(name, shape) and structure.undivided(shape) is None

    def init(params, masks, key=None):
        del key
        return initial_state(masks, {"momentum": jax.tree_util.tree_map(jnp.zeros_like, params)})

    def prune_rate(step):
        if drop_schedule == "constant":
            return jnp.float32(drop_fraction)
        f = schedules.drop_fraction(step, drop_fraction - final_drop_fraction, drop_schedule, end_step)
        return f + final_drop_fraction

    def update(state, key, params, masks, grads):
        mom = jax.tree_util.tree_map(lambda m, g: momentum * m + (1.0 - momentum) * g,
                                     state.extra["momentum"], grads)
        names = [n for n, x in named_leaves(params).items() if updates_leaf(n, tuple(x.shape))]
        due = due_at(state.step)

        def topology(ops):
            params, masks = ops
            w, m, mo = named_leaves(params), named_leaves(masks), named_leaves(mom)
            p = prune_rate(state.step)
            kept, dropped, share, room = {}, [], [], []
            for i, n in enumerate(names):
                active = jnp.sum(m[n], dtype=jnp.int32)
                can_move = active < m[n].size           # dense layers stay out of the exchange
                d = magnitude_drop(jax.random.fold_in(key, i), w[n], None, m[n], p, select=structure.drop) & can_move
                kept[n] = m[n] & ~d
                dropped.append(jnp.sum(d, dtype=jnp.int32) // structure.granule)   # in granules (blocks)
                mean_mom = jnp.sum(jnp.where(m[n], jnp.abs(mo[n]), 0.0)) / jnp.maximum(active, 1)
                share.append(jnp.where(can_move, mean_mom, 0.0))
                room.append(jnp.where(can_move, m[n].size - jnp.sum(kept[n], dtype=jnp.int32), 0) // structure.granule)
            k_alloc, k_grow = jax.random.split(jax.random.fold_in(key, len(names)))
            budget = allocate(sum(dropped), jnp.stack(share), jnp.stack(room), k_alloc)
            new_w, new_m, grown = {}, {}, {}
            for i, n in enumerate(names):
                kg, ki = jax.random.split(jax.random.fold_in(k_grow, i))
                grown[n] = structure.refill(jnp.abs(mo[n]), m[n], kept[n], budget[i] * structure.granule, kg)
                new_m[n] = kept[n] | grown[n]
                new_w[n] = jnp.where(grown[n], grow_values(ki, w[n], kept[n], grow_init),
                                     jnp.where(new_m[n], w[n], 0.0))
            return (replace_named(params, new_w), replace_named(masks, new_m),
                    replace_named(no_growth(masks), grown))

        params, masks, grown = lax.cond(due, topology, lambda ops: (ops[0], ops[1], state.grown),
                                        (params, masks))
        extra = {"momentum": mom}
        return params, masks, state._replace(step=state.step + 1, grown=grown, updated=due, extra=extra)

    rules = MomentumRules(momentum, due_at, prune_rate, updates_leaf, structure, grow_init)
    return SparseAlgorithm(init=init, update=update, train_flops=dense_gradient_every_step,
                           drop_fraction_at=windowed(prune_rate, start_step, end_step), momentum_rules=rules)
