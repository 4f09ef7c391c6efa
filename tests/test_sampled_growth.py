"""Growth by sampled positions (dst.train.sampled_growth), the in-step growth of layers of 2^32 positions and
more: k distinct positions outside the kept weights, in CSR order, uniformly distributed."""

import jax
import jax.numpy as jnp
import numpy as np

from dst.train.sampled_growth import sample_growth


def _slots(rng, shape, count, capacity):
    """A random layer's slots in CSR order: (valid, cols, units) with ``count`` weights in ``capacity`` slots."""
    n_in, n_out = shape
    keys = np.sort(rng.choice(n_in * n_out, count, replace=False))
    units, cols = np.divmod(keys, n_in)
    pad = capacity - count
    return (np.arange(capacity) < count, np.concatenate([cols, np.zeros(pad, int)]).astype(np.int32),
            np.concatenate([units, np.full(pad, n_out - 1)]).astype(np.int32))


def test_grows_k_distinct_free_positions_in_csr_order():
    rng = np.random.default_rng(0)
    shape, count, capacity = (13, 7), 40, 48
    valid, cols, units = _slots(rng, shape, count, capacity)
    kept = valid & (rng.random(capacity) < 0.7)
    k = 30
    grown = jax.jit(sample_growth, static_argnums=(6, 7))(jax.random.key(1), valid, kept, cols, units, k, shape,
                                                          capacity)
    inputs, grown_units, chosen = (np.asarray(a) for a in grown)
    assert chosen.sum() == k and chosen[:k].all()
    pairs = list(zip(grown_units[:k], inputs[:k]))
    assert pairs == sorted(pairs) and len(set(pairs)) == k                 # CSR order, distinct
    kept_pairs = set(zip(units[kept], cols[kept]))
    assert not kept_pairs & set(pairs)                                   # never a kept weight
    assert all(0 <= u < shape[1] and 0 <= c < shape[0] for u, c in pairs)


def test_every_free_position_equally_likely():
    """Over many draws each free position (a just-dropped one included) is grown k/free of the time."""
    rng = np.random.default_rng(2)
    shape, count, capacity = (6, 5), 12, 12
    valid, cols, units = _slots(rng, shape, count, capacity)
    kept = valid.copy()
    kept[:4] = False                                                     # four dropped: free again
    k, trials = 4, 4000
    draw = jax.jit(jax.vmap(lambda key: sample_growth(key, valid, kept, cols, units, k, shape, capacity)))
    inputs, grown_units, chosen = (np.asarray(a) for a in draw(jax.random.split(jax.random.key(3), trials)))
    hits = np.zeros(shape[0] * shape[1])
    np.add.at(hits, (grown_units * shape[0] + inputs)[chosen], 1)
    kept_flat = (units * shape[0] + cols)[kept]
    free = np.setdiff1d(np.arange(hits.size), kept_flat)
    assert hits[kept_flat].sum() == 0
    expected = trials * k / free.size
    chi2 = np.sum((hits[free] - expected) ** 2 / expected)
    assert chi2 < free.size + 5 * np.sqrt(2 * free.size), chi2      # df = free - 1: far below a biased draw's


def test_redraws_a_round_that_falls_short():
    """A nearly full layer: most draws are rejected, and the rounds go on until k positions are free."""
    rng = np.random.default_rng(4)
    shape, count = (5, 4), 18
    valid, cols, units = _slots(rng, shape, count, count)
    kept = valid.copy()
    kept[:2] = False
    inputs, grown_units, chosen = (np.asarray(a) for a in sample_growth(
        jax.random.key(5), jnp.asarray(valid), jnp.asarray(kept), jnp.asarray(cols), jnp.asarray(units), 2 + 2,
        shape, count))
    assert chosen.sum() == 4
    free = set(range(20)) - set((units * 5 + cols)[kept].tolist())
    assert set((grown_units * 5 + inputs)[chosen].tolist()) == free
