"""Layers born sparse (dst.train.large): topologies without a dense mask, SET's update on stored values.

Expectations come from the rules themselves on small layers: growth is uniform among the inactive
positions (counted over many draws), the drop takes the int(f n) smallest magnitudes (computed here with
a plain sort), kept weights keep their values and moments, and a born-sparse model trains as the masked
model with the same weights does.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dst import backends
from dst import kernels
from dst.algorithms import make
from dst.masks import named_leaves
from dst.models import MLP
from dst.train import create_train_state
from dst.train import large
from dst.train import make_train_step
from dst.train.stored import expand_state


def dense_of(values, topology, shape):
    w, mask = backends.csr().expand(jnp.asarray(values), jnp.ones(np.shape(values), bool), topology,
                                    backends.Layout(shape, np.size(values)))
    return np.asarray(w), np.asarray(mask)


def test_sample_absent_is_uniform_over_the_free_positions():
    rng = np.random.default_rng(0)
    present = np.array([2, 5, 11], np.int64)
    size, k, trials = 40, 6, 3000
    hits = np.zeros(size)
    for _ in range(trials):
        chosen = large.sample_absent(rng, present, size, k)
        assert chosen.size == k and np.all(np.diff(chosen) > 0) and not np.isin(chosen, present).any()
        hits[chosen] += 1
    free = np.setdiff1d(np.arange(size), present)
    expected = trials * k / free.size                      # each free position equally often
    assert np.all(hits[present] == 0)
    assert np.all(np.abs(hits[free] - expected) < 5 * np.sqrt(expected))
    full = large.sample_absent(rng, np.array([2, 5]), 8, 6)
    assert full.tolist() == [0, 1, 3, 4, 6, 7]
    with pytest.raises(ValueError, match="free positions"):
        large.sample_absent(rng, np.array([2, 5]), 8, 7)


def test_random_topology_has_the_count_distinct_positions_and_its_transpose():
    shape, count = (37, 23), 200
    topology = large.random_topology(np.random.default_rng(1), shape, count)
    _, mask = dense_of(np.ones(count, np.float32), topology, shape)
    assert mask.sum() == count                              # distinct positions
    assert np.all(np.diff(np.asarray(topology.rowptr)) >= 0) and topology.rowptr[-1] == count
    expected = kernels.transpose(topology.cols, topology.rowptr, shape[0])
    for got, want in zip(topology.transposed, expected):
        np.testing.assert_array_equal(got, want)
    assert large.er_count((784, 1000), 20) == 35680 and large.er_count((1000, 10), 20) == 10000


def test_init_values_follow_the_fan_in_law():
    values = large.init_values(jax.random.key(0), jax.nn.initializers.lecun_normal(), (400, 10**6), 50_000)
    assert values.shape == (50_000,)
    assert float(jnp.std(values)) == pytest.approx(1 / np.sqrt(400), rel=0.03)   # LeCun: Var = 1 / fan_in


@pytest.mark.parametrize("grow_std", [None, 0.1])
def test_set_update_drops_the_smallest_and_grows_among_the_inactive(grow_std):
    shape, count, f = (30, 20), 90, 0.3
    rng = np.random.default_rng(2)
    topology = large.random_topology(rng, shape, count)
    values = jnp.asarray(rng.normal(size=count).astype(np.float32))
    moment = jnp.asarray(rng.normal(size=count).astype(np.float32))
    w0, m0 = dense_of(values, topology, shape)
    mom0, _ = dense_of(moment, topology, shape)

    new_values, new_topology, (new_moment,), dropped = large.set_update(
        jax.random.key(3), rng, values, topology, shape, f, grow_std=grow_std, moments=(moment,))

    k = int(f * count)
    threshold = np.sort(np.abs(np.asarray(values)))[k]     # the k smallest magnitudes go (no ties here)
    kept = m0 & (np.abs(w0) >= threshold)
    w1, m1 = dense_of(new_values, new_topology, shape)
    mom1, _ = dense_of(new_moment, new_topology, shape)
    grown = m1 & ~kept
    assert dropped == k and m1.sum() == count and grown.sum() == k
    np.testing.assert_array_equal(w1[kept], w0[kept])      # kept weights and their moments stay put
    np.testing.assert_array_equal(mom1[kept], mom0[kept])
    assert np.all(mom1[grown] == 0)
    if grow_std is None:
        assert np.all(w1[grown] == 0)
    else:
        assert np.all(w1[grown] != 0) and np.std(w1[grown]) < 0.3
    expected = kernels.transpose(new_topology.cols, new_topology.rowptr, shape[0])
    for got, want in zip(new_topology.transposed, expected):
        np.testing.assert_array_equal(got, want)


def test_a_born_sparse_model_trains_as_the_masked_model_with_its_weights():
    model = MLP(hidden=(24, 16), num_classes=5)
    x = jax.random.normal(jax.random.key(1), (8, 12))
    y = jnp.arange(8) % 5
    tx = optax.sgd(0.1, momentum=0.9)
    static = make("static")
    counts = {"Dense_0/kernel": 60, "Dense_1/kernel": 70}
    storage, state = large.init_born_sparse(jax.random.key(0), np.random.default_rng(0), model, x, counts, tx,
                                            static)
    params, masks = expand_state(storage, state.params, state.masks, state.topologies)
    assert {n: int(m.sum()) for n, m in named_leaves(masks).items() if n in counts} == counts
    masked = create_train_state(jax.random.key(5), params, masks, tx, static)
    masked_step = jax.jit(make_train_step(lambda p, s, x, t, r: (model.apply({"params": p}, x), s), tx,
                                          static).full)
    stored_step = jax.jit(make_train_step(None, tx, static, storage=storage).full)
    for _ in range(3):
        masked, _ = masked_step(masked, (x, y))
        state, _ = stored_step(state, (x, y))
    got, _ = expand_state(storage, state.params, state.masks, state.topologies)
    for name, want in named_leaves(masked.params).items():
        np.testing.assert_allclose(named_leaves(got)[name], want, rtol=1e-5, atol=1e-6)


def test_born_sparse_refuses_a_dynamic_algorithm_in_the_step():
    with pytest.raises(ValueError, match="static algorithm"):
        large.init_born_sparse(jax.random.key(0), np.random.default_rng(0), MLP(hidden=(4,)), jnp.zeros((1, 3)),
                               {"Dense_0/kernel": 5}, optax.sgd(0.1), make("set", update_every=2, end_step=4))
