"""Exact top-k selection against numpy, ties broken from the key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dst.selection import bottom_k_mask
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
