"""SRigL's update rule (Lasby et al. 2024) on hand-made layers.

The worked examples were derived by hand from the paper and the authors' code (calgaryml/condensed-
sparsity, RigLConstFanScheduler); ``reference`` below is a plain numpy loop written from the paper's
description, not from dst's implementation. Rows are output units, as in the paper; dst's kernels are
``[inputs, units]``, so layers go in transposed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dst
from dst.algorithms.srigl import srigl_layer


def _layer(rows_w: dict, rows_g: list, d: int):
    n = len(rows_g)
    w = np.zeros((n, d), np.float32)
    for unit, entries in rows_w.items():
        for i, v in entries.items():
            w[unit, i] = v
    return w, w != 0, np.asarray(rows_g, np.float32)


def _run(w, mask, g, f, budget, gamma, ablatable=True, seed=0):
    new_w, new_m, grown, ablated = jax.jit(srigl_layer, static_argnums=(7,))(
        jax.random.key(seed), jnp.asarray(w.T), jnp.asarray(g.T), jnp.asarray(mask.T), jnp.float32(f),
        jnp.int32(budget), gamma, ablatable)
    return np.asarray(new_w).T, np.asarray(new_m).T, np.asarray(grown).T, np.asarray(ablated)


def _rows(mask):
    return [set(np.flatnonzero(r).tolist()) for r in mask]


def test_example_1_no_unit_is_ablated_and_each_regrows_to_the_fan_in():
    w, mask, g = _layer({0: {0: .9, 1: .2, 2: .5}, 1: {1: .8, 3: .1, 5: .7}, 2: {0: .3, 4: .6, 5: .4}},
                        [[.05, .10, .01, .40, .20, .30], [.25, .02, .15, .35, .45, .03],
                         [.12, .32, .22, .18, .08, .28]], 6)
    new_w, new_m, grown, ablated = _run(w, mask, g, 0.3, 9, 0.3)
    assert _rows(new_m) == [{0, 2, 3}, {1, 4, 5}, {0, 4, 5}]
    assert not ablated.any()
    assert new_w[0, 3] == 0 and new_w[1, 4] == 0 and new_w[0, 0] == np.float32(.9)


def test_example_2_a_unit_without_salient_weights_is_ablated_and_the_budget_shared():
    w, mask, g = _layer({0: {0: .90, 1: .85, 2: .80}, 1: {2: .75, 3: .70, 4: .65}, 2: {0: .60, 4: .55, 5: .50},
                         3: {1: .05, 3: .04, 5: .03}},
                        [[.10, .11, .12, .13, .95, .14], [.93, .15, .16, .17, .18, .19],
                         [.20, .91, .21, .22, .23, .24], [.01, .02, .06, .07, .08, .09]], 6)
    _, new_m, _, ablated = _run(w, mask, g, 0.3, 12, 0.3)
    assert _rows(new_m) == [{0, 1, 2, 4}, {0, 2, 3, 4}, {0, 1, 4, 5}, set()]
    assert ablated.tolist() == [False, False, False, True]
    # Without ablation (gamma 0, or a layer that is never ablated) the unit regrows its fan-in of 3.
    for gamma, ablatable in ((0.0, True), (0.3, False)):
        new_w, new_m, _, ablated = _run(w, mask, g, 0.3, 12, gamma, ablatable)
        assert _rows(new_m) == [{0, 1, 2}, {2, 3, 4}, {0, 4, 5}, {3, 4, 5}] and not ablated.any()
        assert np.all(new_w[3] == 0)        # dst: regrown weights start at zero, just-dropped ones too


def test_example_3_the_safeguard_keeps_enough_units_for_the_budget():
    # B = 18 over 4 units of D = 6 (k0 = 4): at least 18 // 6 + 1 = 4 units must stay, so unit 3, with
    # one salient weight under the threshold int(0.5 * 4) = 2, is not ablated: the threshold drops to 1.
    w, mask, g = _layer({0: {0: .95, 1: .90, 2: .85, 3: .80}, 1: {1: .75, 2: .70, 3: .65, 4: .60},
                         2: {2: .55, 3: .50, 4: .45, 5: .40}, 3: {0: .35, 3: .10, 4: .05, 5: .02}},
                        [[.01, .02, .03, .04, .91, .05], [.92, .06, .07, .08, .09, .11],
                         [.12, .93, .13, .14, .15, .16], [.17, .94, .18, .19, .21, .22]], 6)
    _, new_m, _, ablated = _run(w, mask, g, 0.3, 18, 0.5)
    assert not ablated.any()
    assert _rows(new_m) == [{0, 1, 2, 3}, {1, 2, 3, 4}, {2, 3, 4, 5}, {1, 3, 4, 5}]


def test_example_4_weights_an_ablated_unit_held_leave_the_live_units_keep_set_whole():
    # B = 16 over 4 units of D = 8 (k0 = 4), f = 0.25: p = 4 dropped, n - p = 12 kept. Unit 3 holds two
    # large weights but only those 2 salient (< int(0.75 * 4) = 3): ablated, fan-in 16 // 3 = 5. The
    # authors push its weights below every drop score and keep the 12 largest of the rest: all 12 live
    # weights, the .30 and the .20 among them; each live unit then grows its largest |g| to 5. (Dropping
    # the 4 smallest first and then emptying unit 3 would lose .30 and .20 and grow 2 more by |g|.)
    w, mask, g = _layer({0: {0: .90, 1: .85, 2: .80, 3: .30}, 1: {1: .75, 2: .70, 4: .65, 5: .20},
                         2: {3: .60, 4: .55, 6: .50, 7: .40}, 3: {0: .99, 2: .98, 5: .01, 7: .02}},
                        [[.01, .02, .03, .04, .05, .95, .92, .06], [.07, .08, .09, .11, .12, .13, .94, .14],
                         [.93, .15, .16, .17, .18, .19, .21, .22], [.001, .002, .003, .004, .005, .006, .007, .008]],
                        8)
    new_w, new_m, grown, ablated = _run(w, mask, g, 0.25, 16, 0.75)
    assert ablated.tolist() == [False, False, False, True]
    assert _rows(new_m) == [{0, 1, 2, 3, 5}, {1, 2, 4, 5, 6}, {0, 3, 4, 6, 7}, set()]
    assert _rows(grown) == [{5}, {6}, {0}, set()]
    assert new_w[0, 3] == np.float32(.30) and new_w[1, 5] == np.float32(.20)


def reference(w, mask, g, f, budget, gamma):
    """SRigL's update from the paper's description, one unit (row) at a time."""
    n_out, d = w.shape
    active = [(abs(w[u, i]), u, i) for u in range(n_out) for i in range(d) if mask[u, i]]
    n_prune = int(np.float32(f) * np.float32(len(active)))
    kept = np.zeros_like(mask)
    for _, u, i in sorted(active, reverse=True)[:len(active) - n_prune]:
        kept[u, i] = True
    grad_top = sorted(((abs(g[u, i]), u, i) for u in range(n_out) for i in range(d)), reverse=True)[:n_prune]
    salient = kept.sum(axis=1).astype(int)
    for _, u, i in grad_top:
        salient[u] += not kept[u, i]
    threshold = max(1, int(gamma * (budget // n_out)))
    threshold = min(threshold, sorted(salient, reverse=True)[min(budget // d, n_out - 1)])
    ablated = (salient < threshold) if gamma > 0 else np.zeros(n_out, bool)
    fan = budget // (n_out - ablated.sum())
    # The authors' keep set: the ablated units' weights below every other, then the n - p largest.
    live = [(a, u, i) for a, u, i in active if not ablated[u]]
    kept = np.zeros_like(mask)
    for _, u, i in sorted(live, reverse=True)[:len(active) - n_prune]:
        kept[u, i] = True
    new = np.zeros_like(mask)
    for u in range(n_out):
        if ablated[u]:
            continue
        mine = sorted((i for i in range(d) if kept[u, i]), key=lambda i: -abs(w[u, i]))[:fan]
        others = sorted((i for i in range(d) if i not in mine), key=lambda i: -abs(g[u, i]))
        for i in mine + others[:fan - len(mine)]:
            new[u, i] = True
    return new, ablated


@pytest.mark.parametrize("seed", range(6))
def test_random_layers_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    n_out, d, fan = 7, 20, 6       # units of more than 16 inputs: the searched selection
    mask = np.zeros((n_out, d), bool)
    for u in range(n_out):
        mask[u, rng.choice(d, fan, replace=False)] = True
    w = np.where(mask, rng.permutation(n_out * d).reshape(n_out, d) + 1.0, 0).astype(np.float32) / 100
    w[rng.random(n_out) < 0.4] *= 0.01            # weak units, so that some are ablated
    g = (rng.permutation(n_out * d).reshape(n_out, d) + 1.0).astype(np.float32) / 1000
    g[rng.random(n_out) < 0.3] *= 0.01
    f, budget, gamma = 0.5, n_out * fan, 0.6
    _, new_m, _, ablated = _run(w, mask, g, f, budget, gamma)
    expected, expected_ablated = reference(w, mask, g, f, budget, gamma)
    np.testing.assert_array_equal(ablated, expected_ablated)
    np.testing.assert_array_equal(new_m, expected)


def test_srigl_in_a_run_keeps_constant_fan_in_and_reports_ablations():
    from algo_helpers import tiny_problem

    from dst import structures
    _, params, _, _ = tiny_problem()
    structure = structures.fan_in()
    densities = structures.structured_densities(params, 0.8, "uniform", structure)
    masks = dst.init_masks(jax.random.key(0), params, densities, structure=structure)
    params = dst.apply_masks(params, masks)
    algo = dst.algorithms.make("srigl", update_every=1, end_step=100, drop_fraction=0.5, min_salient_fraction=0.9,
                               no_ablation=["Dense_2"], structure=structure)
    state = algo.init(params, masks)
    update = jax.jit(algo.update)
    for step in range(3):
        grads = jax.tree_util.tree_map(lambda p, s=step: jax.random.normal(jax.random.key(s), p.shape) *
                                       (jnp.arange(p.shape[-1]) % 3 == 0), params)   # a third of units learn
        params, masks, state = update(state, jax.random.key(step), params, masks, grads)
        report = algo.report(state, masks)
        for name, m in dst.masks.named_leaves(masks).items():
            if m.ndim == 2:
                per_unit = np.asarray(m).sum(axis=0)
                live = per_unit[per_unit > 0]
                assert np.all(live == live[0])
                assert report[f"ablated_units/{name}"] == int(np.sum(per_unit == 0))
    assert report["ablated_units/Dense_2/kernel"] == 0 and report["ablated_units/total"] > 0


def test_srigl_refuses_other_structures_and_bad_gamma():
    with pytest.raises(ValueError, match="structure=n_m cannot be kept by SRigL"):
        dst.algorithms.make("srigl", update_every=1, end_step=10, structure=dst.structures.n_m(2, 4))
    with pytest.raises(ValueError, match=r"min_salient_fraction must be in \[0, 1\); got 1.5"):
        dst.algorithms.make("srigl", update_every=1, end_step=10, min_salient_fraction=1.5)
