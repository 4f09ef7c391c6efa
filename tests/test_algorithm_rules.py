"""Each algorithm's rule against a plain numpy reference on small layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dst
from dst import schedules


def _layer(seed, shape=(12, 10), density=0.4):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape[0] * shape[1], bool)
    mask[rng.choice(mask.size, int(density * mask.size), replace=False)] = True
    mask = mask.reshape(shape)
    w = np.where(mask, rng.normal(size=shape), 0.0).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    return w, g, mask


def _one_update(name, w, g, mask, step, **kw):
    algo = dst.algorithms.make(name, update_every=1, end_step=100, **kw)
    params, masks, grads = {"l": {"kernel": jnp.asarray(w)}}, {"l": {"kernel": jnp.asarray(mask)}}, \
        {"l": {"kernel": jnp.asarray(g)}}
    state = algo.init(params, masks)._replace(step=jnp.int32(step))
    p, m, state = jax.jit(algo.update)(state, jax.random.key(0), params, masks, grads)
    return (np.asarray(p["l"]["kernel"]), np.asarray(m["l"]["kernel"]),
            np.asarray(state.grown["l"]["kernel"]))


def _k(f, n):
    return int(np.floor(np.float32(f) * np.float32(n)))


@pytest.mark.parametrize("seed, step", [(0, 0), (1, 30), (2, 77)])
def test_rigl_drops_smallest_magnitude_and_grows_largest_gradient(seed, step):
    w, g, mask = _layer(seed)
    p, m, grown = _one_update("rigl", w, g, mask, step, drop_fraction=0.3, drop_schedule="cosine")
    f = 0.3 / 2 * (1 + np.cos(np.pi * step / 100))
    k = _k(f, mask.sum())
    assert k > 0
    active = np.flatnonzero(mask)
    dropped = active[np.argsort(np.abs(w.reshape(-1)[active]))[:k]]
    kept = mask.reshape(-1).copy()
    kept[dropped] = False
    candidates = np.flatnonzero(~kept)
    grow = candidates[np.argsort(-np.abs(g.reshape(-1)[candidates]))[:k]]
    expected = kept.copy()
    expected[grow] = True
    np.testing.assert_array_equal(m.reshape(-1), expected)
    np.testing.assert_array_equal(np.flatnonzero(grown), np.sort(grow))
    assert (p.reshape(-1)[grow] == 0).all()                       # grow_init="zeros", regrown included
    survivors = kept & ~np.isin(np.arange(kept.size), grow)
    np.testing.assert_array_equal(p.reshape(-1)[survivors], w.reshape(-1)[survivors])
    assert (p.reshape(-1)[~expected] == 0).all()


def test_rigl_drop_fraction_follows_the_cosine_schedule():
    w, g, mask = _layer(5, (30, 30), 0.5)
    for step in (0, 25, 50, 99):
        _, m, grown = _one_update("rigl", w, g, mask, step, drop_fraction=0.4)
        f = float(schedules.drop_fraction(step, 0.4, "cosine", 100))
        dropped = mask & ~(m & ~grown)
        assert dropped.sum() == grown.sum() == _k(f, mask.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_set_sign_split_drops_mocanus_set(seed):
    w, g, mask = _layer(seed, (16, 16), 0.5)
    p, m, grown = _one_update("set", w, g, mask, 0, drop_fraction=0.3, sign_split=True)
    flat_w, flat_m = w.reshape(-1), mask.reshape(-1)
    pos = np.flatnonzero(flat_m & (flat_w >= 0))
    neg = np.flatnonzero(flat_m & (flat_w < 0))
    k_pos, k_neg = _k(0.3, pos.size), _k(0.3, neg.size)
    expected_drop = np.concatenate([pos[np.argsort(flat_w[pos])[:k_pos]],
                                    neg[np.argsort(-flat_w[neg])[:k_neg]]])
    kept = flat_m & m.reshape(-1) & ~grown.reshape(-1)     # survivors that were not regrown
    np.testing.assert_array_equal(np.sort(np.flatnonzero(flat_m & ~kept)), np.sort(expected_drop))
    assert grown.sum() == k_pos + k_neg
    assert m.sum() == mask.sum()


def test_set_grows_uniformly_among_inactive():
    # Over many keys, every inactive position is grown about equally often.
    w, g, mask = _layer(0, (10, 10), 0.3)
    algo = dst.algorithms.make("set", update_every=1, end_step=100, drop_fraction=0.5,
                               drop_schedule="constant")
    params, masks, grads = {"l": jnp.asarray(w)}, {"l": jnp.asarray(mask)}, {"l": jnp.asarray(g)}
    state = algo.init(params, masks)
    update = jax.jit(lambda key: algo.update(state, key, params, masks, grads)[2].grown["l"])
    counts = sum(np.asarray(update(jax.random.key(i)), int) for i in range(300))
    freq = counts[~mask] / 300
    expected = 15 / (70 + 15)     # k=15 grown among the 70 inactive + 15 just dropped
    assert abs(freq.mean() - expected) < 0.02 and freq.min() > 0.05 and freq.max() < 0.35


def test_grow_init_normal_uses_surviving_weight_scale():
    w, g, mask = _layer(3, (40, 40), 0.5)
    p, m, grown = _one_update("rigl", w, g, mask, 0, grow_init="normal")
    values = p[grown]
    assert (values != 0).all()
    kept = m & ~grown
    assert 0.5 < values.std() / np.sqrt(np.mean(w[kept] ** 2)) < 1.5


def test_layer_without_inactive_weights_is_left_alone():
    w, g, _ = _layer(0)
    full = np.ones_like(w, bool)
    p, m, grown = _one_update("rigl", w, g, full, 0)
    assert m.all() and not grown.any()
    np.testing.assert_array_equal(p, w)


@pytest.mark.parametrize("kwargs, field", [
    (dict(update_every=0, end_step=10), "update_every"),
    (dict(update_every=10, end_step=0), "end_step"),
    (dict(update_every=10, end_step=100, drop_fraction=1.5), "drop_fraction"),
    (dict(update_every=10, end_step=100, drop_schedule="step"), "drop_schedule"),
    (dict(update_every=10, end_step=100, grow_init="uniform"), "grow_init"),
])
def test_bad_hyper_parameters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        dst.algorithms.make("rigl", **kwargs)
