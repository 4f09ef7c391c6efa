"""Exact top-k selection against numpy, ties broken from the key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dst import selection
from dst.selection import bottom_k_mask
from dst.selection import sorted_top_k_mask
from dst.selection import top_k_mask


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [0, 1, 17, 200])
def test_top_k_matches_numpy_on_distinct_scores(seed, k):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(20, 30)).astype(np.float32)
    eligible = rng.random((20, 30)) < 0.7
    got = np.asarray(top_k_mask(jnp.asarray(scores), jnp.asarray(eligible), k, jax.random.key(seed)))
    order = np.argsort(-np.where(eligible, scores, -np.inf), axis=None)[:k]
    expected = np.zeros(scores.size, bool)
    expected[order] = True
    np.testing.assert_array_equal(got.reshape(-1), expected & eligible.reshape(-1))


def test_bottom_k_picks_smallest_including_negative_and_zero():
    scores = jnp.array([3.0, -1.0, 0.0, -0.0, 2.0, -5.0])
    got = bottom_k_mask(scores, jnp.ones(6, bool), 2, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(got), [False, True, False, False, False, True])


def test_k_larger_than_eligible_selects_all_eligible():
    eligible = jnp.array([True, False, True, False])
    got = top_k_mask(jnp.arange(4.0), eligible, 10, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(eligible))


def test_ties_are_broken_by_key_with_exact_count():
    scores = jnp.concatenate([jnp.full((500,), 1.0), jnp.full((500,), 2.0)])
    picks = [np.asarray(top_k_mask(scores, jnp.ones(1000, bool), 600, jax.random.key(s))) for s in range(3)]
    for p in picks:
        assert p.sum() == 600 and p[500:].all()          # every 2.0, then 100 of the tied 1.0s
    assert not np.array_equal(picks[0], picks[1])        # which 1.0s depends on the key ...
    again = np.asarray(top_k_mask(scores, jnp.ones(1000, bool), 600, jax.random.key(0)))
    np.testing.assert_array_equal(picks[0], again)       # ... and only on the key
    first_tied = np.stack(picks)[:, :500]
    assert first_tied[:, :100].mean() < 0.6               # not simply the first positions


def test_nan_ranks_lowest_and_k_can_be_traced():
    scores = jnp.array([jnp.nan, 1.0, 2.0, jnp.nan])
    f = jax.jit(lambda k: top_k_mask(scores, jnp.ones(4, bool), k, jax.random.key(0)))
    np.testing.assert_array_equal(np.asarray(f(2)), [False, True, True, False])
    assert int(f(3).sum()) == 3


def _check_top_k(scores, eligible, k, key):
    """Exact count, only eligible, and no unselected eligible score above a selected one."""
    got = np.asarray(jax.jit(top_k_mask)(jnp.asarray(scores), jnp.asarray(eligible), k, key))
    s = np.where(np.isnan(scores), -np.inf, scores)
    assert got.sum() == min(k, eligible.sum())
    assert not (got & ~eligible).any()
    if got.any() and (eligible & ~got).any():
        assert s[got].min() >= s[eligible & ~got].max()
    return got


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("density", [0.05, 0.95])
def test_large_layers_match_numpy_exactly(seed, density):
    # Layers above the sample size take the sampled-bracket path; distinct scores fix the answer.
    rng = np.random.default_rng(seed)
    scores = (rng.standard_t(3, 300_000) * 1e-3).astype(np.float32)
    eligible = rng.random(scores.size) < density
    n = int(eligible.sum())
    for k in [1, 2, 37, n // 3, n - 1, n, n + 5]:
        got = _check_top_k(scores, eligible, k, jax.random.key(seed))
        order = np.argsort(-np.where(eligible, scores, -np.inf), kind="stable")[: min(k, n)]
        expected = np.zeros(scores.size, bool)
        expected[order] = True
        np.testing.assert_array_equal(got, expected)


def test_large_layers_with_heavy_ties_keep_exact_counts():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, 200_000).astype(np.float32)   # four values, ~50k ties each
    eligible = rng.random(scores.size) < 0.5
    for k in [1, 25_000, 60_000, 99_000]:
        _check_top_k(scores, eligible, k, jax.random.key(k))
    zeros_and_some = np.where(rng.random(200_000) < 0.99, 0.0, rng.random(200_000)).astype(np.float32)
    _check_top_k(zeros_and_some, np.ones(200_000, bool), 5_000, jax.random.key(1))   # k-th key is 0


def test_a_sample_that_misses_the_structure_falls_back_exactly():
    # Large scores sit exactly on the sample's stride, so the sample sees only them: its bracket is
    # wrong and the search must widen it and still pick the exact top k.
    n = 300_000
    stride = n // 16384
    scores = np.random.default_rng(1).random(n).astype(np.float32)
    scores[::stride] += 100.0
    eligible = np.ones(n, bool)
    for k in [10, 5_000, 50_000]:
        _check_top_k(scores, eligible, k, jax.random.key(0))
    _check_top_k(-scores, eligible, 5_000, jax.random.key(0))


def test_extreme_magnitudes_and_infinities():
    rng = np.random.default_rng(2)
    scores = (rng.standard_normal(100_000) * 10.0 ** rng.integers(-30, 30, 100_000)).astype(np.float32)
    scores[:10] = np.inf
    scores[10:20] = -np.inf
    scores[20:30] = np.nan
    for k in [5, 10, 11, 50_000, 99_990, 100_000]:
        _check_top_k(scores, np.ones(100_000, bool), k, jax.random.key(k))



def _hard_cases(rng, shape):
    """Scores with distinct values, heavy ties, NaN and infinities, and unsigned ranks."""
    normal = rng.normal(size=shape).astype(np.float32)
    nan = normal.copy()
    nan.flat[rng.integers(0, nan.size, nan.size // 5)] = np.nan
    nan.flat[0], nan.flat[-1] = np.inf, -np.inf
    return [normal, np.round(normal * 2), np.zeros(shape, np.float32), nan,
            rng.integers(0, 5, shape).astype(np.uint32)]


@pytest.mark.parametrize("shape", [(5,), (64, 32)])
def test_the_small_array_search_picks_what_the_bracketed_search_picks(shape, monkeypatch):
    # Arrays up to the sample size take two plain bit searches; the bracketed search (forced by a sample
    # size of 1 while its program is traced) must choose the same elements, tie-break included.
    rng = np.random.default_rng(0)
    n = int(np.prod(shape))
    cases = []
    for scores in _hard_cases(rng, shape):
        for p_ineligible in (0.0, 0.3):
            eligible = jnp.asarray(rng.random(shape) >= p_ineligible)
            m = int(eligible.sum())
            cases += [(jnp.asarray(scores), eligible, k, jax.random.key(k))
                      for k in sorted({0, 1, 2, n // 3, m // 2, max(m - 1, 0), m, m + 1})]
    small = jax.jit(top_k_mask)
    picked = [np.asarray(small(*args)) for args in cases]
    monkeypatch.setattr(selection, "_SAMPLE", 1)
    bracketed = jax.jit(lambda *args: top_k_mask(*args))   # a new function: traced under the patch
    for args, got in zip(cases, picked):
        np.testing.assert_array_equal(got, np.asarray(bracketed(*args)))
        assert got.sum() == min(args[2], int(args[1].sum()))


@pytest.mark.parametrize("shape", [(5,), (40, 30), (200, 300)])
def test_the_sorted_selection_equals_top_k_with_everything_eligible(shape):
    sort, search = jax.jit(sorted_top_k_mask), jax.jit(top_k_mask)
    rng = np.random.default_rng(1)
    n = int(np.prod(shape))
    everything = jnp.ones(shape, bool)
    for scores in _hard_cases(rng, shape):
        for k in sorted({0, 1, 3, n // 4, n - 1, n, n + 2}):
            key = jax.random.key(k + 7)
            np.testing.assert_array_equal(np.asarray(sort(jnp.asarray(scores), k, key)),
                                          np.asarray(search(jnp.asarray(scores), everything, k, key)))
