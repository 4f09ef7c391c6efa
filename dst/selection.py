"""Exact top-k selection for a traced ``k``, without sorting.

A mask update must pick exactly ``k`` weights, where ``k = int(f(t) * n)`` changes with the step, so
``lax.top_k`` (static k) does not fit and a full sort costs ~50x more. Instead we find the k-th largest
score by a 32-step binary search over its order-preserving ``uint32`` bit pattern (each step is one
compare-and-count pass), then break ties at the threshold by a second search over per-element priorities
drawn from the key. Priorities are a keyed bijective hash of the index, so they are unique and the
choice among equal scores is a function of the key, never of array position alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_U32 = jnp.uint32


def _ordered_bits(scores: jax.Array) -> jax.Array:
    """Map float32 scores to uint32 keys with the same order (NaN ranks lowest, -0 == +0).

    Every finite or infinite float maps to a key >= 1, so key 0 can mark ineligible elements.
    """
    x = jnp.where(jnp.isnan(scores), -jnp.inf, scores.astype(jnp.float32)) + 0.0  # -0.0 + 0.0 == +0.0
    bits = lax.bitcast_convert_type(x, _U32)
    negative = (bits >> 31).astype(bool)
    return jnp.where(negative, ~bits, bits | _U32(0x80000000))


def _threshold(keys: jax.Array, k) -> jax.Array:
    """Largest T with ``count(keys >= T) >= k`` (T = 0 when fewer than k keys are >= 1)."""

    def bit_step(i, t):
        candidate = t | (_U32(1) << (_U32(31) - i.astype(_U32)))
        enough = jnp.sum(keys >= candidate, dtype=jnp.int32) >= k
        return jnp.where(enough, candidate, t)

    return lax.fori_loop(0, 32, bit_step, _U32(0))


def _priorities(key: jax.Array, size: int) -> jax.Array:
    """Unique pseudo-random uint32 per index: a keyed murmur3-style mix (every step is a bijection)."""
    seeds = jax.random.bits(key, (3,), _U32)
    h = jnp.arange(size, dtype=_U32) ^ seeds[0]
    h = h * (seeds[1] | _U32(1))
    h = h ^ (h >> 16)
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * _U32(0xC2B2AE35)
    h = h ^ (h >> 16)
    return h ^ seeds[2]


def top_k_mask(scores: jax.Array, eligible: jax.Array, k, key: jax.Array) -> jax.Array:
    """Bool mask of the ``k`` eligible elements with the largest ``scores``.

    Exactly ``min(k, count(eligible))`` elements are selected; ``k`` may be traced. Ties in score are
    broken by priorities drawn from ``key``. NaN scores rank below every number.

    Example::

        grow = top_k_mask(jnp.abs(grads), ~mask, k, key)   # RigL's growth set
    """
    shape = scores.shape
    keys = jnp.where(eligible, _ordered_bits(scores), _U32(0)).reshape(-1)
    k = jnp.asarray(k, jnp.int32)
    t = _threshold(keys, k)
    above = keys > t
    tied = (keys == t) & (keys > 0)
    remaining = k - jnp.sum(above, dtype=jnp.int32)
    n_tied = jnp.sum(tied, dtype=jnp.int32)

    def break_ties(_):
        prio = jnp.where(tied, _priorities(key, keys.size), _U32(0))
        # Tied priorities are unique, so the threshold picks exactly `remaining` of them. A tied
        # element whose priority is 0 looks ineligible here, but as the lowest priority it is only
        # ever needed when every tied element is taken, which the cond below handles.
        return tied & (prio >= _threshold(prio, remaining)) & (remaining > 0)

    take_tied = lax.cond(remaining >= n_tied, lambda _: tied, break_ties, None)
    return ((above | take_tied) & (k > 0)).reshape(shape)


def bottom_k_mask(scores: jax.Array, eligible: jax.Array, k, key: jax.Array) -> jax.Array:
    """Bool mask of the ``k`` eligible elements with the smallest ``scores`` (see :func:`top_k_mask`)."""
    return top_k_mask(-scores.astype(jnp.float32), eligible, k, key)


def global_top_k_masks(scores: dict, eligible: dict, k, key: jax.Array) -> dict:
    """:func:`top_k_mask` over several layers at once (one threshold for all): ``{name: bool mask}``.

    Used by global magnitude pruning (GMP ``global``, GraNet) and one-shot saliency (SNIP, GraSP).
    """
    names = list(scores)
    flat_scores = jnp.concatenate([scores[n].reshape(-1).astype(jnp.float32) for n in names])
    flat_eligible = jnp.concatenate([eligible[n].reshape(-1) for n in names])
    chosen = top_k_mask(flat_scores, flat_eligible, k, key)
    out, start = {}, 0
    for n in names:
        size = scores[n].size
        out[n] = chosen[start:start + size].reshape(scores[n].shape)
        start += size
    return out
