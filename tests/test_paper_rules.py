"""The algorithms against their papers' equations, on hand-made cases of a few weights.

Every expected mask, weight and state below is derived by hand from the paper's equation (the
arithmetic is in the comments), independent of how dst organises the computation. Layers are a 2x3
kernel ``a`` and a 3x2 kernel ``b``; positions are numbered row-major (``a``: 0 1 2 / 3 4 5).
The values are chosen so that every ranking is free of ties and every count ``f * n`` is an integer,
so the cases do not depend on tie-breaking or on floor/round/ceil conventions.

The second half checks the presets' published numbers against their sources and against the README
tables, and the settings of two presets against their reference code.
"""

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hydra import compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

import dst

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tree(a, b=None, dtype=jnp.float32):
    """``{"a": {"kernel": a}, "b": {"kernel": b}}`` from nested lists (``b`` optional)."""
    out = {"a": {"kernel": jnp.asarray(a, dtype)}}
    if b is not None:
        out["b"] = {"kernel": jnp.asarray(b, dtype)}
    return out


def masks_of(a, b=None):
    return tree(a, b, bool)


def leaf(t, name):
    return np.asarray(t[name]["kernel"])


_JITTED = {}


def update(algo, state, params, masks, grads, key=0):
    """One ``algo.update`` call, jitted once per algorithm."""
    run = _JITTED.setdefault(id(algo), (algo, jax.jit(algo.update)))[1]
    return run(state, jax.random.key(key), params, masks, grads)


def init(algo, params, masks, key=0):
    return jax.jit(algo.init)(params, masks, jax.random.key(key))


# --- SNFS: Dettmers & Zettlemoyer 2019 --------------------------------------------------------------
# Momentum M_t = alpha M_{t-1} + (1 - alpha) g_t. At an update with prune rate p: each layer drops the
# p * n_l active weights of smallest |w|; the K dropped in total are redistributed to layer l in
# proportion to the mean |M| of its existing (active) weights, m_l / sum_j m_j * K; each layer regrows
# its share at the zero-valued weights of largest |M|.

def test_snfs_momentum_redistribution_and_regrowth_by_hand():
    algo = dst.algorithms.make("snfs", update_every=2, end_step=100, drop_fraction=0.5,
                               drop_schedule="constant", momentum=0.5)
    params = tree([[0.9, -0.1, 0.0], [0.4, 0.0, -0.2]],
                  [[0.5, 0.0], [-0.3, 0.0], [0.05, 0.7]])
    masks = masks_of([[1, 1, 0], [1, 0, 1]],          # a: active 0 1 3 5
                     [[1, 0], [1, 0], [1, 1]])        # b: active 0 2 4 5
    g1 = tree([[4, -8, 0], [0, 16, 4]], [[2, 8], [1, 0], [0, 1]])
    g2 = tree([[0, -1, 6], [-1, -1, 2]], [[0, 4], [-1, 4], [2, 0]])

    # Step 1 is not an update step (update_every=2): only the momentum moves, M_1 = 0.5*0 + 0.5*g1.
    state = init(algo, params, masks)._replace(step=jnp.int32(1))
    p1, m1, state = update(algo, state, params, masks, g1)
    assert not bool(state.updated)
    np.testing.assert_array_equal(leaf(state.extra["momentum"], "a"), [[2, -4, 0], [0, 8, 2]])
    for n in ("a", "b"):
        np.testing.assert_array_equal(leaf(m1, n), leaf(masks, n))
        np.testing.assert_array_equal(leaf(p1, n), leaf(params, n))

    # Step 2 updates. M_2 = 0.5 M_1 + 0.5 g2 = 0.25 g1 + 0.5 g2:
    #   a: [1, -2, 0, 0, 4, 1] + [0, -0.5, 3, -0.5, -0.5, 1] = [1, -2.5, 3, -0.5, 3.5, 2]
    #   b: [0.5, 2, 0.25, 0, 0, 0.25] + [0, 2, -0.5, 2, 1, 0] = [0.5, 4, -0.25, 2, 1, 0.25]
    p2, m2, state = update(algo, state, params, masks, g2)
    assert bool(state.updated)
    np.testing.assert_array_equal(leaf(state.extra["momentum"], "a"), [[1, -2.5, 3], [-0.5, 3.5, 2]])
    np.testing.assert_array_equal(leaf(state.extra["momentum"], "b"), [[0.5, 4], [-0.25, 2], [1, 0.25]])
    # Prune p = 0.5 of 4 active = 2 per layer, K = 4:
    #   a: |w| at 0 1 3 5 = 0.9 0.1 0.4 0.2 -> drop 1, 5; kept 0, 3
    #   b: |w| at 0 2 4 5 = 0.5 0.3 0.05 0.7 -> drop 4, 2; kept 0, 5
    # Mean |M| of the active weights (before the drop): a (1 + 2.5 + 0.5 + 2) / 4 = 1.5,
    #   b (0.5 + 0.25 + 1 + 0.25) / 4 = 0.5 -> budgets a 1.5/2 * 4 = 3, b 0.5/2 * 4 = 1.
    #   (A mean over all weights, 12.5/6 vs 8/6, would give 2 and 2.)
    # Regrow by |M| among the zero weights: a {1: 2.5, 2: 3, 4: 3.5, 5: 2} -> 4, 2, 1;
    #   b {1: 4, 2: 0.25, 3: 2, 4: 1} -> 1.   (By |g2| alone a would take 2 and 5 first.)
    np.testing.assert_array_equal(leaf(m2, "a"), [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(leaf(m2, "b"), [[1, 1], [0, 0], [0, 1]])
    np.testing.assert_array_equal(leaf(state.grown, "a"), [[0, 1, 1], [0, 1, 0]])
    np.testing.assert_array_equal(leaf(state.grown, "b"), [[0, 1], [0, 0], [0, 0]])
    # Kept weights keep their values; dropped ones are zero; new weights start at zero. (Position a1,
    # dropped and regrown in the same update, is not checked: the paper does not say, and the reference
    # code keeps its old value where dst starts it at zero.)
    a = leaf(p2, "a").reshape(-1)
    np.testing.assert_array_equal(a[[0, 2, 3, 4, 5]], np.float32([0.9, 0.0, 0.4, 0.0, 0.0]))
    np.testing.assert_array_equal(leaf(p2, "b"), np.float32([[0.5, 0.0], [0.0, 0.0], [0.0, 0.7]]))
    assert m2["a"]["kernel"].sum() + m2["b"]["kernel"].sum() == 8      # the total is kept


def test_snfs_prune_rate_follows_the_cosine_decay():
    # p(t) = p_f + (p_0 - p_f) / 2 (1 + cos(pi t / T)), p_0 = 0.5, p_f = 0.005, T = 100:
    #   t = 0: 0.5;  t = 25: 0.005 + 0.2475 * (1 + 0.70710678) = 0.42750893;  t = 50: 0.005 + 0.2475 = 0.2525
    algo = dst.algorithms.make("snfs", update_every=1, end_step=100, drop_fraction=0.5,
                               final_drop_fraction=0.005)
    assert algo.drop_fraction_at(0) == pytest.approx(0.5, abs=1e-7)
    assert algo.drop_fraction_at(25) == pytest.approx(0.42750893, abs=1e-6)
    assert algo.drop_fraction_at(50) == pytest.approx(0.2525, abs=1e-6)


# --- GMP: Zhu & Gupta 2017 --------------------------------------------------------------------------
# s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 at t = t0, t0 + dt, ..., t0 + n dt; at each pruning
# step a layer keeps its (1 - s_t) N largest |w| (the reference, tf.contrib.model_pruning, rounds the
# count); pruned weights are zero and never come back.

W_A = [[0.6, -0.1, 0.3], [-0.8, 0.05, 0.4]]        # |w| order: 3 0 5 2 1 4
W_B = [[0.2, -0.9], [0.7, 0.01], [-0.5, 0.15]]     # |w| order: 1 2 4 0 5 3


def test_gmp_cubic_schedule_prunes_each_layer_by_magnitude():
    algo = dst.algorithms.make("gmp", sparsity=0.5, initial_sparsity=0.0, update_every=2, start_step=0,
                               end_step=8, distribution="uniform", scope="layer")
    params, masks = tree(W_A, W_B), masks_of(np.ones((2, 3)), np.ones((3, 2)))
    grads = tree(np.zeros((2, 3)), np.zeros((3, 2)))
    state = init(algo, params, masks)

    def step(params, masks, state):
        return update(algo, state, params, masks, grads)

    # t = 0: s_0 = s_i = 0 -> keep 6 of 6.
    params, masks, state = step(params, masks, state)
    assert bool(state.updated) and leaf(masks, "a").all() and leaf(masks, "b").all()
    # t = 1: not a pruning step.
    params, masks, state = step(params, masks, state)
    assert not bool(state.updated) and leaf(masks, "a").all()
    # t = 2: s = 0.5 + (0 - 0.5) (1 - 2/8)^3 = 0.5 - 0.5 * 27/64 = 0.2890625; keep 6 * 0.7109375 = 4.27 -> 4
    #   a keeps 3 0 5 2, b keeps 1 2 4 0.
    params, masks, state = step(params, masks, state)
    np.testing.assert_array_equal(leaf(masks, "a"), [[1, 0, 1], [1, 0, 1]])
    np.testing.assert_array_equal(leaf(masks, "b"), [[1, 1], [1, 0], [1, 0]])
    np.testing.assert_array_equal(leaf(params, "a"), np.float32([[0.6, 0, 0.3], [-0.8, 0, 0.4]]))
    # Training moves the survivors: a0 shrinks to -0.25, a2 grows to 0.7 (a: 3 2 5 0 by |w| now).
    params = tree([[-0.25, 0.0, 0.7], [-0.8, 0.0, 0.4]], leaf(params, "b"))
    params, masks, state = step(params, masks, state)      # t = 3: nothing
    # t = 4: s = 0.5 - 0.5 * (1/2)^3 = 0.4375; keep 6 * 0.5625 = 3.375 -> 3 of the current survivors
    #   a: |w| 0.8 (3), 0.7 (2), 0.4 (5), 0.25 (0) -> drop 0;  b: 0.9 0.7 0.5 0.2 -> drop 0.
    params, masks, state = step(params, masks, state)
    np.testing.assert_array_equal(leaf(masks, "a"), [[0, 0, 1], [1, 0, 1]])
    np.testing.assert_array_equal(leaf(masks, "b"), [[0, 1], [1, 0], [1, 0]])
    np.testing.assert_array_equal(leaf(params, "a"), np.float32([[0, 0, 0.7], [-0.8, 0, 0.4]]))
    np.testing.assert_array_equal(leaf(params, "b"), np.float32([[0, -0.9], [0.7, 0], [-0.5, 0]]))
    # t = 6: s = 0.5 - 0.5/64 = 0.4921875, keep 3.05 -> 3; t = 8 = t0 + n dt: s_f = 0.5, keep 3.
    for _ in range(5):
        params, masks, state = step(params, masks, state)
    np.testing.assert_array_equal(leaf(masks, "a"), [[0, 0, 1], [1, 0, 1]])
    np.testing.assert_array_equal(leaf(masks, "b"), [[0, 1], [1, 0], [1, 0]])


def test_gmp_global_threshold_at_half_time():
    # s_f = 2/3, s_i = 0, t - t0 = n dt / 2: s = 2/3 (1 - 1/8) = 7/12; keep 12 * 5/12 = 5 of both layers:
    #   |w| over a and b: b1 0.9, a3 0.8, b2 0.7, a0 0.6, b4 0.5 | a5 0.4 ... -> a {0, 3}, b {1, 2, 4}
    #   (per layer it would be 2.5 each).
    algo = dst.algorithms.make("gmp", sparsity=2 / 3, update_every=4, start_step=0, end_step=8, scope="global")
    params, masks = tree(W_A, W_B), masks_of(np.ones((2, 3)), np.ones((3, 2)))
    state = init(algo, params, masks)._replace(step=jnp.int32(4))
    p, m, _ = update(algo, state, params, masks, tree(np.zeros((2, 3)), np.zeros((3, 2))))
    np.testing.assert_array_equal(leaf(m, "a"), [[1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(leaf(m, "b"), [[0, 1], [1, 0], [1, 0]])
    np.testing.assert_array_equal(leaf(p, "b"), np.float32([[0, -0.9], [0.7, 0], [-0.5, 0]]))


# --- GraNet: Liu et al. 2021 ------------------------------------------------------------------------
# At each update: gradual pruning to Zhu & Gupta's s_t by global magnitude, then zero-cost
# neuroregeneration in every layer: drop the r n_l smallest |w| among the survivors and regenerate as
# many connections where the (dense) gradient |dL/dw| is largest, initialised to zero.

def test_granet_global_pruning_then_regeneration_by_hand():
    algo = dst.algorithms.make("granet", sparsity=4 / 7, initial_sparsity=0.0, update_every=5, start_step=0,
                               end_step=10, drop_fraction=0.5, drop_schedule="constant")
    params = tree([[0.8, -0.05, 0.6], [0.3, -0.02, 0.9]],
                  [[0.1, -0.7], [0.04, 0.5], [-0.03, 0.2]])
    masks = masks_of(np.ones((2, 3)), np.ones((3, 2)))       # dense start, s_i = 0
    grads = tree([[5.0, 3.0, -0.3], [2.0, -4.0, 9.0]],
                 [[0.2, 9.0], [-3.0, 0.5], [1.0, -0.1]])
    state = init(algo, params, masks)._replace(step=jnp.int32(5))
    p, m, state = update(algo, state, params, masks, grads)
    # t = 5 of [0, 10]: s = 4/7 + (0 - 4/7)(1 - 1/2)^3 = 4/7 * 7/8 = 1/2 -> keep 12/2 = 6, one threshold:
    #   |w|: a5 0.9, a0 0.8, b1 0.7, a2 0.6, b3 0.5, a3 0.3 | b5 0.2 ... -> a {0, 2, 3, 5}, b {1, 3}
    # Regeneration r = 0.5: a drops 2 of {0.8, 0.6, 0.3, 0.9} -> 3, 2; kept {0, 5}; grows 2 by |g| among
    #   {1: 3.0, 2: 0.3, 3: 2.0, 4: 4.0} -> 4, 1.  b drops 1 of {0.7, 0.5} -> 3; kept {1}; grows 1 among
    #   {0: 0.2, 2: 3.0, 3: 0.5, 4: 1.0, 5: 0.1} -> 2.
    np.testing.assert_array_equal(leaf(m, "a"), [[1, 1, 0], [0, 1, 1]])
    np.testing.assert_array_equal(leaf(m, "b"), [[0, 1], [1, 0], [0, 0]])
    np.testing.assert_array_equal(leaf(state.grown, "a"), [[0, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(leaf(state.grown, "b"), [[0, 0], [1, 0], [0, 0]])
    np.testing.assert_array_equal(leaf(p, "a"), np.float32([[0.8, 0, 0], [0, 0, 0.9]]))
    np.testing.assert_array_equal(leaf(p, "b"), np.float32([[0, -0.7], [0, 0], [0, 0]]))


# --- MEST: Yuan et al. 2021 -------------------------------------------------------------------------
# Drop the active weights of lowest importance |w| + lambda |dL/dw|, grow as many at random among the
# zero weights (no dense gradient needed), initialised to zero.

def test_mest_drops_by_weight_plus_gradient_and_grows_uniformly_at_random():
    algo = dst.algorithms.make("mest", update_every=1, end_step=100, drop_fraction=0.5,
                               drop_schedule="constant", grad_weight=0.5)
    params = tree([[0.5, -0.2, 0.0], [0.3, 0.0, -0.6]])
    masks = masks_of([[1, 1, 0], [1, 0, 1]])
    grads = tree([[0.1, 0.9, 7.0], [-0.05, 3.0, 0.2]])
    # Importance of the active weights, lambda = 0.5: 0: 0.5 + 0.05 = 0.55, 1: 0.2 + 0.45 = 0.65,
    #   3: 0.3 + 0.025 = 0.325, 5: 0.6 + 0.1 = 0.7 -> drop 0.5 * 4 = 2: 3 and 0 (by |w| alone: 3 and 1).
    #   Kept {1, 5}; 2 grown uniformly among {0, 2, 3, 4}: each with probability 2/4, each pair 1/6.
    state = init(algo, params, masks)
    run = jax.jit(lambda key: algo.update(state, key, params, masks, grads))
    pairs, hits = set(), np.zeros(6, int)
    for i in range(240):
        p, m, s = run(jax.random.key(i))
        mask, grown = leaf(m, "a").reshape(-1), leaf(s.grown, "a").reshape(-1)
        np.testing.assert_array_equal(mask & ~grown, [0, 1, 0, 0, 0, 1])
        assert grown.sum() == 2 and not grown[[1, 5]].any()
        np.testing.assert_array_equal(leaf(p, "a").reshape(-1), np.float32([0, -0.2, 0, 0, 0, -0.6]))
        pairs.add(tuple(np.flatnonzero(grown)))
        hits += grown
    # Every pair shows up (a missing one has probability < 6 (5/6)^240 ~ 1e-18); each position is grown
    # about half the time (binomial, 240 draws: 120 +- 7.7, the bounds are 5 sigma), the large-gradient
    # position 2 no more than the others.
    assert pairs == {(0, 2), (0, 3), (0, 4), (2, 3), (2, 4), (3, 4)}
    assert all(80 <= h <= 160 for h in hits[[0, 2, 3, 4]])


# --- Top-KAST: Jayakumar et al. 2020 ----------------------------------------------------------------
# Forward set A = the D N largest |theta| (the forward pass uses alpha = theta on A, 0 elsewhere);
# backward set B = the (D + M) N largest |theta|, a superset of A; the gradient dL/dalpha updates theta
# on B only; weights in B \ A pay an exploration penalty scaled by 1/D (here penalty/2 * theta^2 / D).

TK_A = [[0.9, -0.1, 0.5], [-0.7, 0.3, 0.05]]     # |theta| order: 0 3 2 4 1 5
TK_B = [[-0.2, 0.6], [0.1, -0.8], [0.4, 0.3]]    # |theta| order: 3 1 4 5 0 2


def topkast(**kw):
    # D = 1 - 2/3 = 1/3: A holds 2 of 6; D + M = 2/3: B holds 4 of 6.
    return dst.algorithms.make("topkast", sparsity=2 / 3, backward_sparsity=1 / 3, update_every=10,
                               end_step=100, distribution="uniform", penalty=0.1, **kw)


def test_topkast_forward_and_backward_sets_and_penalty_by_hand():
    algo = topkast()
    params = tree(TK_A, TK_B)
    masks = masks_of([[0, 1, 0], [0, 0, 1]], [[1, 0], [1, 0], [0, 0]])   # some other 2 per layer
    state = init(algo, params, masks)
    p, m, state = update(algo, state, params, masks, tree(np.zeros((2, 3)), np.zeros((3, 2))))
    # A: a {0, 3}, b {3, 1}; B: a {0, 3, 2, 4}, b {3, 1, 4, 5}; the stored theta do not change.
    np.testing.assert_array_equal(leaf(m, "a"), [[1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(leaf(m, "b"), [[0, 1], [0, 1], [0, 0]])
    np.testing.assert_array_equal(leaf(state.extra["backward"], "a"), [[1, 0, 1], [1, 1, 0]])
    np.testing.assert_array_equal(leaf(state.extra["backward"], "b"), [[0, 1], [0, 1], [1, 1]])
    np.testing.assert_array_equal(leaf(state.grown, "a"), [[1, 0, 0], [1, 0, 0]])   # A \ old mask
    for n in ("a", "b"):
        np.testing.assert_array_equal(leaf(p, n), leaf(params, n))
    # Penalty 0.1/2 * sum_{B \ A} theta^2 / D with D = 1/3: a {2, 4}: 0.25 + 0.09, b {4, 5}: 0.16 + 0.09
    #   -> 0.05 * 3 * 0.59 = 0.0885; its gradient 0.1 * theta / D = 0.3 theta on B \ A.
    value, grad = jax.jit(jax.value_and_grad(lambda q: algo.penalty(state, q, m)))(p)
    assert float(value) == pytest.approx(0.0885, rel=1e-5)
    np.testing.assert_allclose(leaf(grad, "a"), [[0, 0, 0.15], [0, 0.09, 0]], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(leaf(grad, "b"), [[0, 0], [0, 0], [0.12, 0.09]], rtol=1e-6, atol=1e-9)


def test_topkast_one_training_step_by_hand():
    # One linear layer, logits = x @ alpha, loss = sum(logits * y): dL/dalpha_ij = x_i y_j, whatever alpha.
    #   x = [1, -2], y = [0.5, -1, 2] -> G = [[0.5, -1, 2], [-1, 2, -4]]
    algo = topkast()
    apply_fn = lambda params, model_state, x, train, rng: (x @ params["a"]["kernel"], model_state)
    loss_fn = lambda logits, y: jnp.sum(logits * y)
    tx = optax.sgd(0.1)
    params, masks = tree(TK_A), masks_of([[1, 0, 0], [1, 0, 0]])              # masks = A
    state = jax.jit(lambda p, m: dst.create_train_state(jax.random.key(0), p, m, tx, algo))(params, masks)
    np.testing.assert_array_equal(leaf(state.algo_state.extra["backward"], "a"), [[1, 0, 1], [1, 1, 0]])
    step = jax.jit(dst.make_train_step(apply_fn, tx, algo, loss_fn))
    new, _ = step(state, (jnp.float32([[1.0, -2.0]]), jnp.float32([[0.5, -1.0, 2.0]])))
    # SGD, lr 0.1, on B only; B \ A = {2, 4} also gets the penalty gradient 0.3 theta:
    #   0 (A):     0.9 - 0.1 * 0.5              = 0.85
    #   1 (not B): -0.1 (its gradient -1 is not applied)
    #   2 (B\A):   0.5 - 0.1 * (2 + 0.3 * 0.5)  = 0.285
    #   3 (A):     -0.7 - 0.1 * (-1)            = -0.6
    #   4 (B\A):   0.3 - 0.1 * (2 + 0.3 * 0.3)  = 0.091
    #   5 (not B): 0.05
    # (dst puts no penalty on the weights in A and leaves them to the optimizer's weight decay, as the
    # topkast docstring says; the paper's regulariser, as we read it, also has an unscaled L2 term on A.)
    np.testing.assert_allclose(leaf(new.params, "a"), [[0.85, -0.1, 0.285], [-0.6, 0.091, 0.05]], rtol=1e-6)
    # Step 0 is an update step: the sets are the top-k of the new |theta| = 0.85 0.1 0.285 0.6 0.091 0.05:
    #   A = {0, 3}; B = {0, 3, 2, 1} (1 at 0.1 now beats 4 at 0.091).
    np.testing.assert_array_equal(leaf(new.masks, "a"), [[1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(leaf(new.algo_state.extra["backward"], "a"), [[1, 1, 1], [1, 0, 0]])


# --- RigL: Evci et al. 2020 (the drop-fraction schedule shared by RigL, GraNet and SNFS) -------------

def test_rigl_drops_alpha_over_two_at_half_time():
    # (float32 cos(pi/2) is -4.4e-8: computed naively, f(T/2) = 0.24999999 and int(f n) = 0, not 1.)
    # f(t) = alpha/2 (1 + cos(pi t / T_end)); t = T_end / 2: f = alpha / 2 = 0.25 for alpha = 0.5.
    # 4 active -> drop 0.25 * 4 = 1: the smallest |w| (a1, 0.1); grow 1 where |g| is largest among the
    # zero weights {1, 2, 4} (|g| 0, 3, 1) -> 2.
    algo = dst.algorithms.make("rigl", update_every=1, end_step=100, drop_fraction=0.5)
    params, masks = tree([[0.9, -0.1, 0.0], [0.4, 0.0, -0.2]]), masks_of([[1, 1, 0], [1, 0, 1]])
    state = init(algo, params, masks)._replace(step=jnp.int32(50))
    _, m, _ = update(algo, state, params, masks, tree([[5.0, 0.0, 3.0], [5.0, 1.0, 5.0]]))
    np.testing.assert_array_equal(leaf(m, "a"), [[1, 0, 1], [1, 0, 1]])


# --- The presets' published numbers ----------------------------------------------------------------

def header(preset):
    """The comment block at the top of a preset, without the leading '# '."""
    lines = (ROOT / "conf" / "experiment" / f"{preset}.yaml").read_text().splitlines()
    return [line[1:].strip() for line in lines if line.startswith("#")]


def header_table(preset):
    """``{(row, column): value}`` of the first table in a preset's header: a line starting with
    'sparsity' names the columns; the rows below it are cells separated by two or more spaces."""
    lines = header(preset)
    start = next(i for i, line in enumerate(lines) if line.startswith("sparsity "))
    columns = re.split(r"\s{2,}", lines[start])[1:]
    table = {}
    for line in lines[start + 1:]:
        cells = re.split(r"\s{2,}", line)
        numbers = [c for c in cells[1:] if re.fullmatch(r"\d+(\.\d+)?", c)]
        if len(numbers) < 2:
            break
        table.update({(cells[0], col): float(v) for col, v in zip(columns, numbers)})
    return table


# google-research/rigl issue #8, the first author's exact numbers behind Fig. 4 (accuracy, WRN-22-2).
RIGL_CIFAR10 = {"RigL (ERK)": (0.942, 0.936, 0.929, 0.918), "RigL_2x (ERK)": (0.942, 0.938, 0.933, 0.924),
                "Static (ERK)": (0.941, 0.929, 0.915, 0.890), "Pruning (ERK)": (0.940, 0.936, 0.933, 0.923)}
# TimDettmers/sparse_learning results/WRN-28-2_results_summary.csv (accuracy x 100; DSR = "Dynamic Sparse").
SNFS_CSV = {"0.9": {"dense": 9470, "sparse momentum": 9361.4, "DSR": 9359, "SET": 9328, "DeepR": 9141},
            "0.8": {"dense": 9470, "sparse momentum": 9432.4, "DSR": 9440, "SET": 9425, "DeepR": 9236}}
# google-research/rigl README, "1x Training Results" (top-1, ResNet-50); the preset quotes the paper's
# one-decimal table, so within 0.1.
RIGL_IMAGENET = {("RigL ERK", "0.8"): 75.12, ("RigL ERK", "0.9"): 73.07,
                 ("RigL uniform", "0.8"): 74.60, ("RigL uniform", "0.9"): 72.02}


def test_preset_tables_hold_the_sources_numbers():
    wrn = header_table("rigl_wrn22_cifar10")
    expected = {(row, col): round(100 * acc, 1) for row, accs in RIGL_CIFAR10.items()
                for col, acc in zip(("0.5", "0.8", "0.9", "0.95"), accs)}
    assert wrn == expected
    snfs = header_table("snfs_wrn28_2_cifar10")
    assert snfs == {(s, col): round(v / 100, 2) for s, row in SNFS_CSV.items() for col, v in row.items()}
    imagenet = header_table("rigl_resnet50_imagenet")
    assert set(imagenet) == set(RIGL_IMAGENET)
    for cell, value in RIGL_IMAGENET.items():
        assert abs(imagenet[cell] - value) <= 0.1, cell


def readme_presets_row(preset):
    text = (ROOT / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| `{preset}` |"))
    return row.split("|")[3]


def numbers(text):
    return [float(x) for x in re.findall(r"\d+\.\d+", text)]


# The README's "published" cell of each preset, in the order it quotes the header's cells.
README_CELLS = {
    "rigl_wrn22_cifar10": [("RigL (ERK)", "0.8"), ("RigL (ERK)", "0.9"), ("Static (ERK)", "0.8"),
                           ("Static (ERK)", "0.9")],
    "snfs_wrn28_2_cifar10": [("0.9", "sparse momentum"), ("0.9", "SET"), ("0.9", "dense")],
    "rigl_resnet50_imagenet": [("RigL ERK", "0.8"), ("RigL ERK", "0.9"), ("RigL uniform", "0.8"),
                               ("RigL uniform", "0.9")],
}


@pytest.mark.parametrize("preset", sorted(README_CELLS))
def test_readme_quotes_the_presets_numbers(preset):
    table = header_table(preset)
    assert numbers(readme_presets_row(preset)) == [table[cell] for cell in README_CELLS[preset]]


def test_set_tutorial_published_numbers_are_the_mean_and_std_of_the_logged_seeds():
    text = (ROOT / "experiments" / "set_tutorial" / "README.md").read_text()
    stated = {}
    for label, model in (("SET", "set_mlp"), ("static", "fixprob_mlp"), ("dense", "fc_mlp")):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} (`{model}`"))
        summary, seeds = row.split("|")[2:4]
        runs = np.array(numbers(seeds))
        assert len(runs) == 5
        mean, std, pop = numbers(summary)
        assert (mean, std, pop) == (round(runs.mean(), 2), round(runs.std(ddof=1), 2), round(runs.std(), 2))
        stated[label] = (mean, std)
    # SET 412.8 / 5 = 82.56, sample std sqrt(3.292 / 4) = 0.91; static 403.0 / 5 = 80.60, sqrt(1.48 / 4) =
    # 0.61; dense 409.9 / 5 = 81.98, sqrt(0.268 / 4) = 0.26.
    assert stated == {"SET": (82.56, 0.91), "static": (80.60, 0.61), "dense": (81.98, 0.26)}
    quoted = " ".join(header("set_tutorial"))
    assert "SET 82.56 ± 0.91, static (FixProb) 80.60 ± 0.61, dense 81.98 ± 0.26" in quoted
    assert numbers(readme_presets_row("set_tutorial")) == [82.56, 80.60, 81.98]
    results = next(line for line in (ROOT / "README.md").read_text().splitlines()
                   if line.startswith("| SET tutorial"))
    assert numbers(results.split("|")[4]) == [82.56, 0.91, 80.60, 0.61, 81.98, 0.26]


def test_mnist1d_preset_quotes_the_mlp_baseline():
    # github.com/greydanus/mnist1d README: the MLP baseline reaches 68% test accuracy.
    assert "Published: MLP test accuracy 68% on MNIST-1D" in " ".join(header("mnist1d_mlp"))
    assert readme_presets_row("mnist1d_mlp").strip() == "about 68%"


# --- The presets' settings against the reference code ---------------------------------------------

def composed(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


REFERENCE_SETTINGS = {
    # google-research/rigl rigl/cifar_resnet/resnet_train_eval.py flags: batch_size 128, momentum 0.9,
    # MomentumOptimizer(use_nesterov=True), l2 5e-4, lr boundaries [30000, 60000, 90000] with values
    # 0.1 / 5**i, maskupdate_frequency 100, maskupdate_begin_step 0, drop_fraction 0.3, grow_init zeros,
    # prune_first_layer False; resnet_model.py droprate 0.3; 97656 steps = 250 epochs of 50,000 / 128.
    "rigl_wrn22_cifar10": {
        "trainer.batch_size": 128, "trainer.epochs": 250, "optimizer.lr": 0.1, "optimizer.momentum": 0.9,
        "optimizer.nesterov": True, "optimizer.weight_decay": 5e-4, "optimizer.schedule": "step",
        "optimizer.step_every": 30000, "optimizer.gamma": 0.2, "sparsity.algorithm": "rigl",
        "sparsity.update_every": 100, "sparsity.start_step": 0, "sparsity.drop_fraction": 0.3,
        "sparsity.drop_schedule": "cosine", "sparsity.grow_init": "zeros", "sparsity.distribution": "erk",
        "sparsity.dense_layers": ["^stem_conv/"], "model.dropout": 0.3, "dataset.val_fraction": 0.0},
    # TimDettmers/sparse_learning mnist_cifar/main.py: batch 100, lr 0.1, momentum 0.9, SGD(nesterov=True,
    # weight_decay=l2=5e-4), StepLR(decay_frequency=25000, gamma=0.1), valid_split 0.1, wrn-28-2 dropRate
    # 0.3; sparselearning/core.py: prune rate 0.5 with CosineDecay(eta_min=0.005), growth momentum;
    # density 0.1 for the 90% runs.
    "snfs_wrn28_2_cifar10": {
        "trainer.batch_size": 100, "optimizer.lr": 0.1, "optimizer.momentum": 0.9, "optimizer.nesterov": True,
        "optimizer.weight_decay": 5e-4, "optimizer.schedule": "step", "optimizer.step_every": 25000,
        "optimizer.gamma": 0.1, "dataset.val_fraction": 0.1, "model.dropout": 0.3,
        "sparsity.algorithm": "snfs", "sparsity.sparsity": 0.9, "sparsity.drop_fraction": 0.5,
        "sparsity.final_drop_fraction": 0.005, "sparsity.drop_schedule": "cosine", "sparsity.momentum": 0.9,
        "sparsity.distribution": "uniform", "sparsity.dense_layers": []},
}


@pytest.mark.parametrize("preset", sorted(REFERENCE_SETTINGS))
def test_preset_settings_are_the_reference_codes(preset):
    cfg = composed(f"experiment={preset}")
    got = {}
    for key in REFERENCE_SETTINGS[preset]:
        group, name = key.split(".")
        got[key] = cfg[group][name]
    assert got == REFERENCE_SETTINGS[preset]
    assert cfg["model"]["name"] == {"rigl_wrn22_cifar10": "wrn22_2", "snfs_wrn28_2_cifar10": "wrn28_2"}[preset]
    assert math.isclose(cfg["sparsity"]["sparsity"], {"rigl_wrn22_cifar10": 0.8, "snfs_wrn28_2_cifar10": 0.9}[preset])


def test_a_constant_drop_fraction_that_float32_rounds_down_still_drops_its_whole_count():
    # alpha = 0.7 is stored as 0.69999999 in float32; 10 active weights -> drop 0.7 * 10 = 7, not 6.
    from dst.algorithms.base import drop_count
    assert int(drop_count(jnp.float32(0.7), jnp.int32(10))) == 7
    assert int(drop_count(jnp.float32(0.7), jnp.int32(9))) == 6      # 6.3 -> 6: no rounding up
    # ... nor on a large layer (a 3x3x512x512 conv): int(0.3 * 2,359,296) = int(707,788.8) = 707,788.
    assert int(drop_count(jnp.float32(0.3), jnp.int32(3 * 3 * 512 * 512))) == 707788
