"""SNFS budget allocation, GMP off-schedule steps, SNIP, GraSP, MEST sparsity decay and Top-KAST training on
small cases. The rules of SNFS, GMP, GraNet, MEST and Top-KAST against their papers: test_paper_rules.py."""

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


# --- SNFS ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("total, weights, capacity, expected", [
    (100, [1.0, 1.0, 2.0], [1000, 1000, 1000], [25, 25, 50]),    # 100 * 1/4, 1/4, 2/4
    (100, [10.0, 1.0, 1.0], [20, 1000, 1000], [20, 40, 40]),     # 83.3 > 20: capped; 80 left, split 1:1
    (50, [5.0, 3.0, 0.0], [10, 10, 1000], [10, 10, 30]),         # 31.25, 18.75 > 10: both capped; the
                                                                 # zero-weight layer takes the last 30
    (9, [1.0, 0.0], [4, 4], [4, 4]),                             # more than fits: min(9, 4 + 4) = 8
])
def test_snfs_allocation_caps_spills_and_sums_exactly(total, weights, capacity, expected):
    got = allocate(jnp.int32(total), jnp.asarray(weights, jnp.float32), jnp.asarray(capacity, jnp.int32),
                   jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_snfs_allocation_hands_the_remainder_to_one_layer():
    # 7 over three equal layers: 2.33 each -> floors 2, 2, 2 and the one left over to one of them.
    got = np.asarray(allocate(jnp.int32(7), jnp.ones(3, jnp.float32), jnp.full(3, 1000, jnp.int32),
                              jax.random.key(0)))
    assert sorted(got) == [2, 2, 3]


# --- GMP -------------------------------------------------------------------------------------------

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
    g = jax.jit(jax.grad(f))(flat)
    hg = np.asarray(jax.jit(jax.hessian(f))(flat)) @ np.asarray(g)   # jitted: eager is 10x slower
    score_tree = unravel(jnp.asarray(-np.asarray(flat) * hg))
    names = ["Dense_0", "Dense_1"]
    score = np.concatenate([np.asarray(score_tree[n]["kernel"]).reshape(-1) for n in names])
    remove = score.size - round(0.4 * score.size)
    expected = np.ones(score.size, bool)
    expected[np.argsort(-score)[:remove]] = False
    got = np.concatenate([np.asarray(masks[n]["kernel"]).reshape(-1) for n in names])
    np.testing.assert_array_equal(got, expected)


# --- MEST ------------------------------------------------------------------------------------------

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


# --- Top-KAST --------------------------------------------------------------------------------------

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
