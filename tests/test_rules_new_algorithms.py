"""SNFS, GMP, SNIP, GraSP, MEST, GraNet and Top-KAST against plain numpy references on small cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dst
from dst.algorithms.snfs import allocate

SHAPES = {"a": (12, 10), "b": (10, 8), "c": (8, 6)}


def _layers(seed, density=0.4, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    w, g, m = {}, {}, {}
    for n, shape in shapes.items():
        mask = np.zeros(int(np.prod(shape)), bool)
        mask[rng.choice(mask.size, int(density * mask.size), replace=False)] = True
        m[n] = mask.reshape(shape)
        w[n] = np.where(m[n], rng.normal(size=shape), 0.0).astype(np.float32)
        g[n] = rng.normal(size=shape).astype(np.float32)
    return w, g, m


def _tree(d):
    return {n: {"kernel": jnp.asarray(v)} for n, v in d.items()}


def _flat(tree):
    return {n: np.asarray(v["kernel"]) for n, v in tree.items()}


def _update(algo, w, g, m, step, state=None):
    params, masks, grads = _tree(w), _tree(m), _tree(g)
    state = state if state is not None else algo.init(params, masks)
    state = state._replace(step=jnp.int32(step))
    p, mm, state = jax.jit(algo.update)(state, jax.random.key(0), params, masks, grads)
    return _flat(p), _flat(mm), state


def _smallest(values, eligible, k):
    idx = np.flatnonzero(eligible)
    return idx[np.argsort(values.reshape(-1)[idx], kind="stable")[:k]]


def _largest(values, eligible, k):
    idx = np.flatnonzero(eligible)
    return idx[np.argsort(-values.reshape(-1)[idx], kind="stable")[:k]]


def _floor(f, n):
    return int(np.floor(np.float32(f) * np.float32(n)))


# --- SNFS ------------------------------------------------------------------------------------------

def _numpy_allocate(total, weights, capacity):
    capacity = capacity.astype(float)
    total = min(total, capacity.sum())
    fixed, free = np.zeros_like(capacity), capacity > 0
    share = np.zeros_like(capacity)
    for _ in range(len(capacity)):
        w = np.where(free, weights, 0.0)
        if w.sum() <= 0:
            w = free.astype(float)
        share = np.where(free, (total - fixed.sum()) * w / max(w.sum(), 1e-30), 0.0)
        over = free & (share >= capacity)
        fixed[over] = capacity[over]
        free &= ~over
    floats = fixed + np.where(free, share, 0.0)
    base = np.floor(floats)
    remainder = int(round(total - base.sum()))
    order = [i for i in np.argsort(-(floats - base), kind="stable") if base[i] < capacity[i]]
    for i in order[:remainder]:
        base[i] += 1
    return base.astype(int)


@pytest.mark.parametrize("total, weights, capacity", [
    (100, [1.0, 1.0, 2.0], [1000, 1000, 1000]),       # plain proportional split
    (100, [10.0, 1.0, 1.0], [20, 1000, 1000]),         # the first layer is capped, the rest spills
    (50, [5.0, 3.0, 0.0], [10, 10, 1000]),             # both weighted layers capped: the rest goes on
    (7, [1.0, 1.0, 1.0], [1000, 1000, 1000]),          # remainders
])
def test_snfs_allocation_caps_spills_and_sums_exactly(total, weights, capacity):
    got = np.asarray(allocate(jnp.int32(total), jnp.asarray(weights, jnp.float32),
                              jnp.asarray(capacity, jnp.int32), jax.random.key(0)))
    assert got.sum() == total and (got <= np.asarray(capacity)).all() and (got >= 0).all()
    np.testing.assert_array_equal(got, _numpy_allocate(total, np.asarray(weights), np.asarray(capacity)))


def test_snfs_update_matches_reference():
    w, g, m = _layers(0)
    algo = dst.algorithms.make("snfs", update_every=1, end_step=100, drop_fraction=0.5,
                               final_drop_fraction=0.005, momentum=0.9)
    step = 20
    p, mm, state = _update(algo, w, g, m, step)
    mom = {n: 0.1 * g[n] for n in g}             # first update from zero momentum: m = 0.9*0 + 0.1*g
    rate = 0.005 + (0.5 - 0.005) / 2 * (1 + np.cos(np.pi * step / 100))
    kept, dropped, share, room = {}, 0, [], []
    for n in SHAPES:
        k = _floor(np.float32(rate), m[n].sum())
        drop = _smallest(np.abs(w[n]), m[n].reshape(-1), k)
        kept[n] = m[n].reshape(-1).copy()
        kept[n][drop] = False
        dropped += k
        share.append(np.abs(mom[n])[m[n]].mean())
        room.append(m[n].size - kept[n].sum())
    budget = _numpy_allocate(dropped, np.asarray(share), np.asarray(room))
    total_before = sum(m[n].sum() for n in SHAPES)
    assert sum(mm[n].sum() for n in SHAPES) == total_before
    for i, n in enumerate(SHAPES):
        grow = _largest(np.abs(mom[n]), ~kept[n], budget[i])
        expected = kept[n].copy()
        expected[grow] = True
        np.testing.assert_array_equal(mm[n].reshape(-1), expected)
        assert (p[n].reshape(-1)[grow] == 0).all()
    np.testing.assert_allclose(_flat(state.extra["momentum"])["a"], mom["a"], rtol=1e-6)


# --- GMP -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gmp_keeps_the_largest_magnitudes_on_the_cubic_schedule(scope):
    w, g, _ = _layers(1, density=1.0)
    m = {n: np.ones_like(x, bool) for n, x in w.items()}
    algo = dst.algorithms.make("gmp", sparsity=0.8, update_every=10, start_step=0, end_step=100,
                               distribution="uniform", scope=scope)
    step = 40
    p, mm, _ = _update(algo, w, g, m, step)
    s_t = np.float32(0.8 + (0.0 - 0.8) * (1 - 0.4) ** 3)
    if scope == "layer":
        for n in SHAPES:
            keep = int(np.round(np.float32(1 - s_t) * m[n].size))
            expected = np.zeros(m[n].size, bool)
            expected[_largest(np.abs(w[n]), m[n].reshape(-1), keep)] = True
            np.testing.assert_array_equal(mm[n].reshape(-1), expected)
    else:
        allw = np.concatenate([np.abs(w[n]).reshape(-1) for n in SHAPES])
        total = sum(m[n].size for n in SHAPES)
        keep = int(np.round(np.float32(1 - s_t) * total))
        threshold = np.sort(allw)[::-1][keep - 1]
        got = np.concatenate([mm[n].reshape(-1) for n in SHAPES])
        assert got.sum() == keep
        np.testing.assert_array_equal(got, allw >= threshold)
    for n in SHAPES:
        assert (p[n][~mm[n]] == 0).all()
        np.testing.assert_array_equal(p[n][mm[n]], w[n][mm[n]])


def test_gmp_skips_steps_off_schedule():
    w, g, _ = _layers(1, density=1.0)
    m = {n: np.ones_like(x, bool) for n, x in w.items()}
    algo = dst.algorithms.make("gmp", sparsity=0.8, update_every=10, start_step=0, end_step=100)
    _, mm, state = _update(algo, w, g, m, 41)
    assert all(mm[n].all() for n in SHAPES) and not bool(state.updated)


# --- SNIP / GraSP ----------------------------------------------------------------------------------

def _tiny_classifier():
    model = dst.models.MLP(hidden=(6,), num_classes=3)
    params = model.init(jax.random.key(0), jnp.zeros((1, 5)))["params"]
    x = jax.random.normal(jax.random.key(1), (16, 5))
    y = jnp.arange(16) % 3
    loss = lambda p, batch: dst.train.cross_entropy(model.apply({"params": p}, batch[0]), batch[1])
    return params, x, y, loss


def _one_shot(name, params, loss, batches):
    masks = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    algo = dst.algorithms.make(name, sparsity=0.6, batches=len(batches))
    return algo.prune_at_init(jax.random.key(0), params, masks, loss, batches)


def test_snip_keeps_the_largest_connection_sensitivity():
    params, x, y, loss = _tiny_classifier()
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    masks = _one_shot("snip", params, loss, batches)
    grads = [jax.grad(loss)(params, b) for b in batches]
    names = ["Dense_0", "Dense_1"]
    score = np.concatenate([np.abs(np.asarray(params[n]["kernel"]) *
                                   (np.asarray(grads[0][n]["kernel"]) + np.asarray(grads[1][n]["kernel"])) / 2
                                   ).reshape(-1) for n in names])
    keep = round(0.4 * score.size)
    expected = np.zeros(score.size, bool)
    expected[np.argsort(-score)[:keep]] = True
    got = np.concatenate([np.asarray(masks[n]["kernel"]).reshape(-1) for n in names])
    np.testing.assert_array_equal(got, expected)
    assert np.asarray(masks["Dense_0"]["bias"]).all()


def test_grasp_removes_the_largest_minus_w_hg():
    params, x, y, loss = _tiny_classifier()
    batches = [(x, y)]
    masks = _one_shot("grasp", params, loss, batches)
    # Reference Hessian-gradient product from the explicit Hessian of the flattened parameters.
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    f = lambda v: loss(unravel(v), batches[0])
    g = jax.grad(f)(flat)
    hg = np.asarray(jax.hessian(f)(flat)) @ np.asarray(g)
    score_tree = unravel(jnp.asarray(-np.asarray(flat) * hg))
    names = ["Dense_0", "Dense_1"]
    score = np.concatenate([np.asarray(score_tree[n]["kernel"]).reshape(-1) for n in names])
    remove = score.size - round(0.4 * score.size)
    expected = np.ones(score.size, bool)
    expected[np.argsort(-score)[:remove]] = False
    got = np.concatenate([np.asarray(masks[n]["kernel"]).reshape(-1) for n in names])
    np.testing.assert_array_equal(got, expected)


# --- MEST ------------------------------------------------------------------------------------------

def test_mest_drops_smallest_weight_plus_gradient_and_grows_at_random():
    w, g, m = _layers(2, shapes={"a": (16, 12)})
    algo = dst.algorithms.make("mest", update_every=1, end_step=100, drop_fraction=0.3, grad_weight=0.5)
    p, mm, state = _update(algo, w, g, m, 0)
    grown = _flat(state.grown)["a"]
    k = _floor(0.3, m["a"].sum())
    drop = _smallest(np.abs(w["a"]) + 0.5 * np.abs(g["a"]), m["a"].reshape(-1), k)
    kept = m["a"].reshape(-1).copy()
    kept[drop] = False
    np.testing.assert_array_equal(mm["a"].reshape(-1) & ~grown.reshape(-1), kept)
    assert grown.sum() == k and mm["a"].sum() == m["a"].sum()


def test_mest_sparsity_decay_moves_counts_to_the_final_target():
    w, g, m = _layers(3, density=0.5, shapes={"a": (20, 20)})
    algo = dst.algorithms.make("mest", update_every=10, end_step=101, drop_fraction=0.2, sparsity=0.8,
                               initial_sparsity=0.5, distribution="uniform")
    state = None
    counts = []
    for step in range(0, 101, 10):
        w_, mm, state = _update(algo, w, g, m, step, state)
        w, m = w_, mm
        counts.append(int(m["a"].sum()))
    n0, nf = 200, 80
    expected = [int(np.round(n0 + (nf - n0) * min(t / 100, 1.0))) for t in range(0, 101, 10)]
    assert counts == expected


# --- GraNet ----------------------------------------------------------------------------------------

def test_granet_prunes_globally_then_regrows_by_gradient():
    w, g, m = _layers(4, density=0.5)
    algo = dst.algorithms.make("granet", sparsity=0.9, initial_sparsity=0.5, update_every=10, end_step=100,
                               drop_fraction=0.4)
    step = 30
    p, mm, state = _update(algo, w, g, m, step)
    s_t = np.float32(0.9 + (0.5 - 0.9) * (1 - 0.3) ** 3)
    sizes = sum(m[n].size for n in SHAPES)
    keep = int(np.round(np.float32(1 - s_t) * sizes))
    allw = np.concatenate([np.where(m[n], np.abs(w[n]), -1).reshape(-1) for n in SHAPES])
    order = np.argsort(-allw, kind="stable")[:keep]
    survivors = np.zeros(allw.size, bool)
    survivors[order] = True
    offset, f = 0, np.float32(0.4 / 2 * (1 + np.cos(np.pi * step / 100)))
    for n in SHAPES:
        size = m[n].size
        after_prune = survivors[offset:offset + size]
        offset += size
        k = _floor(f, after_prune.sum())
        drop = _smallest(np.abs(w[n]), after_prune, k)
        kept = after_prune.copy()
        kept[drop] = False
        grow = _largest(np.abs(g[n]), ~kept, k)
        expected = kept.copy()
        expected[grow] = True
        np.testing.assert_array_equal(mm[n].reshape(-1), expected)
        assert (p[n].reshape(-1)[grow] == 0).all()
    assert sum(mm[n].sum() for n in SHAPES) == keep


# --- Top-KAST --------------------------------------------------------------------------------------

def test_topkast_sets_are_top_k_magnitudes_and_nested():
    w, g, _ = _layers(5, density=1.0)
    m = {n: np.ones_like(x, bool) for n, x in w.items()}
    algo = dst.algorithms.make("topkast", sparsity=0.8, backward_sparsity=0.5, update_every=1, end_step=100,
                               distribution="uniform")
    p, mm, state = _update(algo, w, g, m, 0)
    back = _flat(state.extra["backward"])
    for n in SHAPES:
        a = np.zeros(m[n].size, bool)
        a[_largest(np.abs(w[n]), np.ones(m[n].size, bool), round(0.2 * m[n].size))] = True
        b = np.zeros(m[n].size, bool)
        b[_largest(np.abs(w[n]), np.ones(m[n].size, bool), round(0.5 * m[n].size))] = True
        np.testing.assert_array_equal(mm[n].reshape(-1), a)
        np.testing.assert_array_equal(back[n].reshape(-1), b)
        np.testing.assert_array_equal(p[n], w[n])            # dense storage: no weight is zeroed


def test_topkast_penalty_gradient():
    w, g, m = _layers(6, density=0.2)
    w = {n: np.random.default_rng(7).normal(size=x.shape).astype(np.float32) for n, x in w.items()}
    algo = dst.algorithms.make("topkast", sparsity=0.8, backward_sparsity=0.5, update_every=1, end_step=100,
                               penalty=0.1, distribution="uniform")
    params, masks = _tree(w), _tree(m)
    state = algo.init(params, masks)
    grad = _flat(jax.grad(lambda p: algo.penalty(state, p, masks))(params))
    back = _flat(state.extra["backward"])
    for n in SHAPES:
        density = m[n].sum() / m[n].size
        expected = np.where(back[n] & ~m[n], 0.1 * w[n] / density, 0.0)
        np.testing.assert_allclose(grad[n], expected, rtol=1e-5, atol=1e-8)
        assert (back[n] >= m[n]).all() and back[n].sum() == round(0.5 * m[n].size)


def test_topkast_training_updates_only_the_backward_set():
    from algo_helpers import start_state

    model, x, y, algo, tx, state = start_state("topkast")
    step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo))
    new, _ = step(state, (x[:32], y[:32]))
    back = dst.masks.named_leaves(state.algo_state.extra["backward"])
    for n, before in dst.masks.named_leaves(state.params).items():
        after = np.asarray(dst.masks.named_leaves(new.params)[n])
        b = np.asarray(back[n])
        np.testing.assert_array_equal(after[~b], np.asarray(before)[~b])
        assert (after[b] != np.asarray(before)[b]).any()
