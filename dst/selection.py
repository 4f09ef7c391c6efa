"""Exact top-k selection for a traced ``k``, without sorting.

A mask update must pick exactly ``k`` weights, where ``k = int(f(t) * n)`` changes with the step, so
``lax.top_k`` (static k) does not fit and a full sort costs ~50x more. Instead we find the k-th largest
score as a threshold on its order-preserving ``uint32`` bit pattern, with counting passes only (each
``count(keys >= t)``): a strided sample brackets the k-th key, interpolated probes narrow the bracket
(about 8 passes on smooth scores, where a bit-by-bit search always takes 32), and ties at the threshold
are broken by a second search over per-element priorities drawn from the key. Priorities are a keyed
bijective hash of the index, so they are unique and the choice among equal scores is a function of
the key, never of array position alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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


def _sample_thresholds(sample: jax.Array, ranks: tuple, bits: int = 24) -> tuple:
    """For each rank r: the largest T, to its top ``bits`` bits, with ``count(sample >= T) >= r``
    (0 when fewer than r keys are >= 1). A bit-by-bit search, all ranks in one loop: on a small
    sample the loop's iterations cost more than its passes, and 24 bits place a float score to
    1 part in 2^15, closer than the sample itself can."""

    def bit_step(i, ts):
        bit = _U32(1) << (_U32(31) - i.astype(_U32))
        return tuple(jnp.where(_count(sample, t | bit) >= r, t | bit, t) for t, r in zip(ts, ranks))

    return lax.fori_loop(0, bits, bit_step, tuple(_U32(0) for _ in ranks))


_SAMPLE = 16384        # strided sample size that brackets the k-th key before any full pass
# above every key: +inf maps to 0xFF800000 and NaN to -inf. A numpy scalar: importing dst must not start
# a JAX backend (jax.distributed.initialize has to come first in a multi-process run).
_MAX_KEY = np.uint32(0xFFFFFFFF)


def _count(keys, t):
    return jnp.sum(keys >= t, dtype=jnp.int32)


def _bracket(keys: jax.Array, k):
    """``(lo, c_lo, hi, c_hi)`` with ``c(x) = count(keys >= x)``, ``c_lo >= k > c_hi`` (or ``lo = 1``
    when fewer than ``k`` keys are eligible) and ``1 <= lo < hi``.

    A strided sample predicts where the k-th key lies; the bracket is its rank +- 3 sigma. Exactness
    never depends on the sample: the two counts are taken on the full array, and a wrong guess is
    widened to the full key range.
    """
    n = keys.size
    stride = max(1, n // _SAMPLE)
    one = _U32(1)
    if stride == 1:  # small arrays: the full range, no sample
        return one, _count(keys, one), _MAX_KEY, jnp.int32(0)
    sample = keys[::stride]
    expect = k.astype(jnp.float32) * (sample.size / n)
    margin = 3.0 * jnp.sqrt(jnp.maximum(expect, 1.0)) + 2.0
    more = jnp.ceil(expect + margin).astype(jnp.int32)    # sample rank of a lower key ...
    fewer = jnp.floor(expect - margin).astype(jnp.int32)  # ... and of a higher one
    t_lo, t_hi = _sample_thresholds(sample, (more, fewer))
    lo = jnp.maximum(t_lo, one)
    # With fewer than ~1 sampled key expected above the k-th one, the sample's top is the guess.
    t_hi = jnp.where(fewer >= 1, t_hi + _U32(0xFF), jnp.max(sample))   # round the 24-bit key up
    hi = jnp.where(t_hi >= lo, t_hi + one, _MAX_KEY)   # keys stop at 0xFF800000: no overflow
    c_lo, c_hi = _count(keys, lo), _count(keys, hi)

    def widen(b):
        lo, c_lo, hi, c_hi = b
        # lo too high: the k-th key is below it; hi too low: above it.
        return lax.cond(c_lo < k,
                        lambda: (one, _count(keys, one), lo, c_lo),
                        lambda: (hi, c_hi, _MAX_KEY, jnp.int32(0)))

    ok = ((c_lo >= k) | (lo == one)) & (c_hi < k)
    return lax.cond(ok, lambda b: b, widen, (lo, c_lo, hi, c_hi))


def _search(keys: jax.Array, k):
    """``(t, exact, c_above)``: when ``exact``, the keys ``>= t`` are the top ``min(k, eligible)``;
    otherwise ``keys > t`` are ``c_above < k`` of them and ``t`` is the k-th largest key, shared by
    more keys than are still needed (a tie to break).

    Each iteration is one counting pass over ``keys``. Probes interpolate the count linearly inside
    the bracket, which lands near the k-th key in a few passes on smooth score distributions; a
    bisection follows two probes that did not halve the count inside the bracket, so the worst case
    stays bounded (~3 passes per bit, against 32 passes always for a plain bit-by-bit search).
    """
    k = jnp.asarray(k, jnp.int32)

    def searching(s):
        lo, c_lo, hi, c_hi = s[:4]
        return (c_lo > k) & (c_hi < k - 1) & (hi - lo > 1)

    def probe(s):
        lo, c_lo, hi, c_hi, i, older, old = s
        span = (c_lo - c_hi).astype(jnp.float32)    # keys inside the bracket
        aim = (c_lo - k).astype(jnp.float32) + 0.5    # how many of them lie below the k-th key
        frac = jnp.clip(aim / span, 0.0, 1.0)
        width = hi - lo
        offset = jnp.clip(width.astype(jnp.float32) * frac, 1.0, 4.0e9).astype(_U32)
        bisect = (i >= 2) & (2 * (c_lo - c_hi) > older)
        offset = jnp.where(bisect, width // 2, offset)
        p = lo + jnp.clip(offset, _U32(1), width - _U32(1))
        c = _count(keys, p)
        up = c >= k
        return (jnp.where(up, p, lo), jnp.where(up, c, c_lo), jnp.where(up, hi, p), jnp.where(up, c_hi, c),
                i + 1, old, c_lo - c_hi)

    lo, c_lo, hi, c_hi = _bracket(keys, k)
    start = (lo, c_lo, hi, c_hi, jnp.int32(0), c_lo - c_hi, c_lo - c_hi)
    lo, c_lo, hi, c_hi = lax.while_loop(searching, probe, start)[:4]
    exact = (c_lo <= k) | (k <= 0)
    # One key short of k above `hi`: the largest key below `hi` is the k-th (one max pass instead of
    # narrowing the bracket down to it).
    last = (~exact) & (c_hi == k - 1) & (hi - lo > 1)
    t = lax.cond(last, lambda: jnp.max(jnp.where(keys < hi, keys, _U32(0))), lambda: lo)
    return t, exact, c_hi


def _kth_largest_bits(keys: jax.Array, k) -> jax.Array:
    """The largest ``t`` with ``count(keys >= t) >= k``, bit by bit: 32 counting passes, one small loop."""
    return _sample_thresholds(keys, (k,), 32)[0]


def _kth_largest_along(keys: jax.Array, k: jax.Array, axis: int) -> jax.Array:
    """:func:`_kth_largest_bits` of every group along ``axis`` at once; ``k`` and the result keep that
    axis with size 1."""

    def bit_step(i, t):
        probe = t | (_U32(1) << (_U32(31) - i.astype(_U32)))
        return jnp.where(jnp.sum(keys >= probe, axis=axis, keepdims=True, dtype=jnp.int32) >= k, probe, t)

    return lax.fori_loop(0, 32, bit_step, jnp.zeros(k.shape, _U32))


def _small_top_k(keys: jax.Array, k, priorities: Callable[[], jax.Array]) -> jax.Array:
    """:func:`top_k_mask`'s selection on a small flat ``keys`` (0: ineligible), with the same result.

    On a small array a pass costs less than a loop iteration, so two plain 32-pass bit searches (the
    k-th key, then the tie-break among the keys equal to it) run about as fast as the bracketed search
    and its conditionals, and compile to half the program: every mask update of a small layer compiles
    faster (most of a small train step's compile time is selection).
    """
    k = jnp.minimum(k, jnp.sum(keys > 0, dtype=jnp.int32))  # min(k, eligible)
    t = _kth_largest_bits(keys, jnp.maximum(k, 1))          # >= 1 whenever k >= 1
    above, tied = keys > t, keys == t
    remaining = k - jnp.sum(above, dtype=jnp.int32)
    prio = jnp.where(tied, priorities(), _U32(0))
    # Priorities are unique, so when some tied keys stay out, the `remaining`-th largest priority is
    # >= 1 and picks exactly `remaining` of them (a tied key of priority 0 is only needed when all are).
    p = _kth_largest_bits(prio, jnp.maximum(remaining, 1))
    take_tied = jnp.where(jnp.sum(tied, dtype=jnp.int32) <= remaining, tied, tied & (prio >= p))
    return (above | take_tied) & (k > 0)


def _priorities(key: jax.Array, size: int) -> jax.Array:
    """Unique pseudo-random uint32 per index: a keyed murmur3-style mix (every step is a bijection)."""
    return priorities_at(key, jnp.arange(size, dtype=_U32))


class Priorities(NamedTuple):
    """The tie-break priorities of :func:`priorities_at` as a call: ``Priorities(key, positions)()`` (``positions``
    None: the flat indices ``0 .. size - 1``). A selection that breaks few ties (the compiled top-k) draws them
    only for the elements it ranks, from ``seeds()``, and never computes the whole array.

    ``tiebreak`` (int32, one per element; compiled top-k only): the last key among equal priorities. A layer of
    2^32 positions or more gives its weights' 32-bit flat positions (``input * n_out + unit`` wrapped), whose
    priorities repeat, and their inputs here: the pair is unique, so the selection stays exact. Below 2^32 the
    priorities are unique and it never decides."""

    key: jax.Array
    positions: jax.Array | None
    size: int
    tiebreak: jax.Array | None = None

    def seeds(self) -> jax.Array:
        """The hash's three ``uint32`` seeds (:func:`priorities_at`)."""
        return jax.random.bits(self.key, (3,), _U32)

    def __call__(self) -> jax.Array:
        positions = jnp.arange(self.size, dtype=_U32) if self.positions is None else jnp.reshape(self.positions, -1)
        return priorities_at(self.key, positions)


def priorities_at(key: jax.Array, positions: jax.Array) -> jax.Array:
    """The tie-break priorities of the elements at flat ``positions`` of an array (uint32; unique for
    distinct positions below 2^32): what :func:`top_k_mask` draws for those elements of the whole array,
    computed without the array, so a selection over part of it (stored weights, a block of rows) breaks
    ties as the selection over the whole would."""
    # dst_top_k_hashed (dst/kernels/csrc/selection.cc) computes the same hash: change both or neither.
    seeds = jax.random.bits(key, (3,), _U32)
    h = positions.astype(_U32) ^ seeds[0]
    h = h * (seeds[1] | _U32(1))
    h = h ^ (h >> 16)
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * _U32(0xC2B2AE35)
    h = h ^ (h >> 16)
    return h ^ seeds[2]


def random_ranks(key: jax.Array, shape) -> jax.Array:
    """Unique pseudo-random ``uint32`` scores, one per element: uniform random selection by
    :func:`top_k_mask` without ties (cheaper than ``jax.random.uniform``, whose 2^23 float values
    collide often in a million-weight layer)."""
    return _priorities(key, math.prod(shape)).reshape(shape)


def score_keys(scores: jax.Array) -> jax.Array:
    """Order-preserving ``uint32`` keys >= 1: floats by their bits, unsigned integers as they are."""
    if jnp.issubdtype(scores.dtype, jnp.unsignedinteger):
        return jnp.maximum(scores.astype(_U32), _U32(1))  # 0 and 1 tie; the tie-break settles it
    return _ordered_bits(scores)


# The selection :func:`top_k_mask` runs when its caller names none: set while a function is traced.
_SELECTION: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("dst_selection", default=None)


@contextlib.contextmanager
def selecting_with(of_keys: Callable):
    """Trace :func:`top_k_mask` calls inside the block with ``of_keys`` (e.g. :func:`dst.kernels.top_k_of_keys`)
    where they name no selection: an algorithm's own ``update`` run on a stored layer's dense view selects
    with the compiled kernel, which picks the same elements in one pass. A trace-time choice: the traced
    program, never its results, depends on it."""
    token = _SELECTION.set(of_keys)
    try:
        yield
    finally:
        _SELECTION.reset(token)


def top_k_mask(scores: jax.Array, eligible: jax.Array, k, key: jax.Array, positions=None,
               of_keys: Callable | None = None, tiebreak=None) -> jax.Array:
    """Bool mask of the ``k`` eligible elements with the largest ``scores``.

    Exactly ``min(k, count(eligible))`` elements are selected; ``k`` may be traced. Ties in score are
    broken by priorities drawn from ``key`` for each element's flat index, or for ``positions`` when
    given (the flat indices the elements have in a larger array: the stored weights of a layer select
    as the layer's dense view would). NaN scores rank below every number; unsigned integer scores
    (:func:`random_ranks`) rank as integers. ``of_keys``: the selection on keys, :func:`top_k_of_keys`
    or one with its result (:func:`dst.kernels.top_k_of_keys`, one compiled call). ``tiebreak``: the last key
    among equal priorities (:class:`Priorities`; the compiled selection only).

    Example::

        grow = top_k_mask(jnp.abs(grads), ~mask, k, key)   # RigL's growth set
    """
    shape = scores.shape
    keys = jnp.where(eligible, score_keys(scores), _U32(0)).reshape(-1)
    priorities = Priorities(key, None if positions is None else jnp.reshape(positions, -1), keys.size,
                            None if tiebreak is None else jnp.reshape(tiebreak, -1))
    return (of_keys or _SELECTION.get() or top_k_of_keys)(keys, k, priorities).reshape(shape)


def top_k_of_keys(keys: jax.Array, k, priorities: Callable[[], jax.Array]) -> jax.Array:
    """:func:`top_k_mask` on flat order-preserving ``uint32`` keys (0: ineligible), ties broken by the
    larger of ``priorities()`` (unique ``uint32``, computed only when a tie must be broken): the ``k``
    largest by (key, priority). A selection streamed over blocks merges its candidates with it."""
    k = jnp.asarray(k, jnp.int32)
    if keys.size <= _SAMPLE:  # where the bracketed search would take no sample either
        return _small_top_k(keys, k, priorities)
    t, exact, c_above = _search(keys, k)
    above = keys >= jnp.where(exact, t, t + _U32(1))

    def break_ties(_):
        tied = keys == t
        remaining = k - c_above

        def by_priority():
            prio = jnp.where(tied, priorities(), _U32(0))
            # Tied priorities are unique, so the search picks exactly `remaining` of them. A tied
            # element whose priority is 0 looks ineligible here, but as the lowest priority it is
            # only needed when every tied element is taken, which the outer cond handles.
            p, _, _ = _search(prio, remaining)
            return tied & (prio >= p)

        return lax.cond(jnp.sum(tied, dtype=jnp.int32) <= remaining, lambda: tied, by_priority)

    take_tied = lax.cond(exact, lambda _: jnp.zeros_like(above), break_ties, None)
    return (above | take_tied) & (k > 0)


def sorted_top_k_mask(scores: jax.Array, k, key: jax.Array) -> jax.Array:
    """:func:`top_k_mask` with every element eligible, by one lexicographic sort (score, then the same
    tie-break priority), with the same result.

    A sort compiles to one small program but costs O(n log n) to run: worth it for a selection made
    once (mask initialisation), where it saves about half a second of compile per layer shape and runs
    faster than that compile up to about a million weights (dst.masks), not inside the train step.
    """
    shape, size = scores.shape, scores.size
    ordered = score_keys(scores).reshape(-1)
    # Ascending on the complements: the largest score first, the highest priority first among equals.
    *_, order = lax.sort((~ordered, ~_priorities(key, size), jnp.arange(size, dtype=jnp.int32)), num_keys=2)
    return jnp.zeros(size, bool).at[order].set(jnp.arange(size) < k).reshape(shape)


# Groups up to this long rank their elements by pairwise comparison (one pass per element of a group)
# instead of two 32-pass bit searches: N:M groups (M = 4 or 8) select in a fraction of the time.
_PAIRWISE_GROUP = 16


def grouped_top_k_mask(scores: jax.Array, eligible: jax.Array, k, key: jax.Array, axis: int = -1,
                       positions=None) -> jax.Array:
    """:func:`top_k_mask` in every group along ``axis`` at once: each group gets its ``k`` eligible
    elements of largest score (exactly ``min(k, eligible in the group)``), ties broken by keyed
    priorities. ``k`` broadcasts against the scores with ``axis`` of size 1 (one count per group). The
    selection of structured sparsity: the groups are N:M groups or output units, taken in place (no
    transpose).

    Short groups (N:M) rank each element against the others of its group; long ones (output units)
    take a 32-pass bit search for each group's threshold, and a second one for the tie-break only when
    some group has more elements tied at its threshold than it still needs. Either way the result is
    the ``k`` largest by (score, priority). ``positions``: as in :func:`top_k_mask`.
    """
    axis = axis % scores.ndim
    keys = jnp.where(eligible, score_keys(scores), _U32(0))
    count_shape = keys.shape[:axis] + (1,) + keys.shape[axis + 1:]
    k = jnp.minimum(jnp.broadcast_to(jnp.asarray(k, jnp.int32), count_shape),
                    jnp.sum(keys > 0, axis=axis, keepdims=True, dtype=jnp.int32))
    prio = (_priorities(key, keys.size) if positions is None else priorities_at(key, positions)).reshape(keys.shape)
    if keys.shape[axis] <= _PAIRWISE_GROUP:
        better = jnp.zeros(keys.shape, jnp.int32)
        for j in range(keys.shape[axis]):
            kj, pj = lax.slice_in_dim(keys, j, j + 1, axis=axis), lax.slice_in_dim(prio, j, j + 1, axis=axis)
            better = better + ((kj > keys) | ((kj == keys) & (pj > prio))).astype(jnp.int32)
        return (keys > 0) & (better < k)
    t = _kth_largest_along(keys, jnp.maximum(k, 1), axis)
    above, tied = keys > t, keys == t
    remaining = k - jnp.sum(above, axis=axis, keepdims=True, dtype=jnp.int32)
    all_tied = jnp.sum(tied, axis=axis, keepdims=True, dtype=jnp.int32) <= remaining

    def by_priority():
        tied_prio = jnp.where(tied, prio, _U32(0))
        p = _kth_largest_along(tied_prio, jnp.maximum(remaining, 1), axis)
        return jnp.where(all_tied, tied, tied & (tied_prio >= p))

    take_tied = lax.cond(jnp.all(all_tied), lambda: tied, by_priority)
    return (above | take_tied) & (k > 0)


def bottom_k_mask(scores: jax.Array, eligible: jax.Array, k, key: jax.Array, positions=None,
                  of_keys: Callable | None = None, tiebreak=None) -> jax.Array:
    """Bool mask of the ``k`` eligible elements with the smallest ``scores`` (see :func:`top_k_mask`)."""
    return top_k_mask(-scores.astype(jnp.float32), eligible, k, key, positions, of_keys, tiebreak)


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
