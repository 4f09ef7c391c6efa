"""Uniform random growth on a stored layer of 2^32 positions or more, by sampling positions, not ranking them.

The stored update (:mod:`dst.train.stored_update`) grows by ranking every inactive position by a grow score
formed block by block over the dense layer, with positions as 32-bit flat indices. SET's and MEST's score is
a uniform random rank, so their growth is a uniformly random ``k``-subset of the inactive positions; on a
layer of ``n_in n_out >= 2^32`` positions (a 333,334-wide SET-MLP layer has 1.1e11), ranking costs a pass
over the dense size and the flat index does not fit 32 bits. :func:`sample_growth` draws the same law in
O(capacity log capacity): positions as ``(unit, input)`` pairs of int32, drawn uniformly, a draw rejected
where it is a kept weight or repeats an earlier draw, the first ``k`` survivors in draw order kept. Those
are a uniform ``k``-subset of the positions not kept (each draw is uniform, and the event of rejection is
the same for every free position), which is what ranking by uniform random ranks gives: the law of the
masked run's growth, though not its draw (no masked run of that size exists to compare with). A just-dropped
weight may be regrown, as in the dense update.

A round draws ``capacity`` plus a margin over the expected rejections; in the rare round that leaves fewer
than ``k`` survivors the whole round is drawn again with the next key (conditioning on a
permutation-invariant event keeps the choice uniform).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from dst import kernels


def rounds_margin(capacity: int, shape: tuple[int, int]) -> int:
    """Draws beyond ``capacity`` per round: twice the expected rejections (kept weights hit, pairs of draws
    that coincide) plus six of their standard deviations and a few."""
    size = shape[0] * shape[1]
    expected = capacity * capacity / size + capacity * capacity / (2 * size)
    return int(2 * expected + 6 * math.sqrt(expected) + 64)


def _first_at_or_after(sorted_units, sorted_cols, units, cols):
    """For each ``(units, cols)`` pair, the first index of the lexicographically sorted pairs
    ``(sorted_units, sorted_cols)`` that is not less than it (a vectorised binary search)."""
    n = sorted_units.shape[0]
    lo = jnp.zeros(units.shape, jnp.int32)
    hi = jnp.full(units.shape, n, jnp.int32)

    def halve(_, bounds):
        lo, hi = bounds
        mid = jnp.minimum((lo + hi) // 2, n - 1)
        su, sc = sorted_units[mid], sorted_cols[mid]
        less = (su < units) | ((su == units) & (sc < cols))
        open_ = lo < hi
        return jnp.where(open_ & less, mid + 1, lo), jnp.where(open_ & ~less, mid, hi)

    lo, _ = lax.fori_loop(0, max(1, n.bit_length()), halve, (lo, hi))
    return lo


def sample_growth(key, valid, kept, cols, units, k, shape: tuple[int, int], capacity: int):
    """``(inputs, units, chosen)``: ``k`` positions drawn uniformly among those of a ``[n_in, n_out]`` layer
    outside ``kept``, in CSR order (by unit, then input) in ``capacity`` slots, ``chosen`` marking the used
    ones (a prefix), as :func:`dst.train.stored_update.grow_candidates` returns them. ``valid``, ``kept``,
    ``cols``, ``units``: the layer's slots in CSR order (valid ones sorted by unit, then input)."""
    n_in, n_out = shape
    valid, kept, cols, units = (jnp.asarray(a) for a in (valid, kept, cols, units))
    draws = capacity + rounds_margin(capacity, shape)
    # Slots in CSR order; those without a weight sort last (unit n_out), so the pairs are sorted.
    slot_units = jnp.where(valid, units, n_out).astype(jnp.int32)
    slot_cols = jnp.where(valid, cols, 0).astype(jnp.int32)
    order = jnp.arange(draws, dtype=jnp.int32)

    def draw(round_key):
        k_unit, k_input = jax.random.split(round_key)
        u = jax.random.randint(k_unit, (draws,), 0, n_out, jnp.int32)
        c = jax.random.randint(k_input, (draws,), 0, n_in, jnp.int32)
        u, c, index = lax.sort((u, c, order), num_keys=3)         # by position, then draw order
        at = jnp.minimum(_first_at_or_after(slot_units, slot_cols, u, c), capacity - 1)
        taken = (slot_units[at] == u) & (slot_cols[at] == c) & kept[at]
        repeat = jnp.concatenate([jnp.zeros(1, bool), (u[1:] == u[:-1]) & (c[1:] == c[:-1])])
        survives = ~taken & ~repeat                              # the first draw of a free position
        in_draw_order = jnp.zeros(draws, bool).at[index].set(survives)
        first_k = in_draw_order & (jnp.cumsum(in_draw_order, dtype=jnp.int32) <= k)
        return u, c, first_k[index], jnp.sum(survives, dtype=jnp.int32)

    def short(carry):
        return carry[-1] < k

    def again(carry):
        round_ = carry[0] + 1
        return (round_, *draw(jax.random.fold_in(key, round_)))

    _, u, c, chosen, _ = lax.while_loop(short, again, (jnp.int32(0), *draw(jax.random.fold_in(key, 0))))
    index, count = kernels.compact(chosen, capacity)
    return c[index], u[index], jnp.arange(capacity) < count
