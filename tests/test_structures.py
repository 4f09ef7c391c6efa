"""Structured sparsity (dst.structures): selection, initial masks, and every algorithm that takes a
structure keeping it exactly while it still changes the mask.

The expected masks and the structure checks here are written from the definitions (numpy, the kernel's
matrix view in memory order), not from the library's own group views."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from algo_helpers import make_algorithm
from algo_helpers import tiny_problem

import dst
from dst import structures
from dst.masks import named_leaves
from dst.selection import grouped_top_k_mask

STRUCTURES = {"n_m": structures.n_m(2, 4), "fan_in": structures.fan_in(), "block": structures.block(2, 2)}


def holds(mask, name, density=None):
    """Whether ``mask`` has the structure, from the definition (numpy)."""
    mat = np.asarray(mask).reshape(-1, mask.shape[-1])      # [R, n_out]: rows in memory order
    r, n_out = mat.shape
    if name == "n_m":
        per_group = mat.reshape(r // 4, 4, n_out).sum(axis=1)
        return bool(np.all(per_group == 2))
    if name == "fan_in":
        per_unit = mat.sum(axis=0)
        live = per_unit[per_unit > 0]
        return bool(np.all(live == live[0]))
    per_block = mat.reshape(r // 2, 2, n_out // 2, 2).sum(axis=(1, 3))
    return bool(np.all((per_block == 0) | (per_block == 4)))


# --- selection -----------------------------------------------------------------------------------------

def test_grouped_top_k_picks_each_rows_largest():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 9)).astype(np.float32)
    eligible = rng.random((6, 9)) < 0.7
    k = np.array([0, 1, 3, 9, 2, 5], np.int32)
    got = np.asarray(grouped_top_k_mask(jnp.asarray(scores), jnp.asarray(eligible), jnp.asarray(k)[:, None],
                                        jax.random.key(0)))
    for row in range(6):
        order = [i for i in np.argsort(-scores[row]) if eligible[row, i]]
        expected = set(order[:k[row]])
        assert set(np.flatnonzero(got[row])) == expected, row


def test_grouped_top_k_breaks_ties_by_key_with_exact_counts():
    scores = jnp.asarray(np.array([[1, 1, 1, 1, 0, 0], [2, 1, 1, 1, 1, 0]], np.float32))
    k = jnp.asarray([[2], [3]])
    picks = [np.asarray(grouped_top_k_mask(scores, jnp.ones((2, 6), bool), k, jax.random.key(s))) for s in range(8)]
    for got in picks:
        assert got.sum(axis=1).tolist() == [2, 3]
        assert not got[0, 4:].any() and got[1, 0] and not got[1, 5]
    assert len({p.tobytes() for p in picks}) > 1      # the key, not the position, chooses among ties


# --- initial masks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_initial_masks_have_the_structure_and_the_count(name):
    structure = STRUCTURES[name]
    shape = (3, 3, 8, 6)                 # a conv kernel: R = 72 in memory order, 6 output units
    d = structure.round_density(shape, 0.3)
    n = int(round(d * np.prod(shape)))
    mask = jax.jit(structure.init_mask, static_argnums=(1, 2))(jax.random.key(1), shape, n)
    assert int(mask.sum()) == n and holds(mask, name)
    expected_density = {"n_m": 0.5, "fan_in": round(0.3 * 72) / 72, "block": round(0.3 * 36 * 3) / (36 * 3)}
    assert d == pytest.approx(expected_density[name])


def test_structured_densities_name_and_exclude_undivided_layers():
    params = {"a": {"kernel": jnp.zeros((12, 8))}, "b": {"kernel": jnp.zeros((10, 4))},
              "c": {"kernel": jnp.zeros((8, 3))}}
    s = structures.n_m(1, 4)
    assert structures.undivided_layers(params, s, ["a/kernel", "b/kernel", "c/kernel"]) == {
        "b/kernel": "its reduction dimension 10 is not a multiple of M=4"}
    densities = structures.structured_densities(params, 0.75, "erk", s)
    assert densities == {"a/kernel": 0.25, "c/kernel": 0.25}
    fan = structures.structured_densities(params, 0.6, "uniform", structures.fan_in())
    assert fan == {"a/kernel": 5 / 12, "b/kernel": 4 / 10, "c/kernel": 3 / 8}   # round(0.4 R) / R


# --- the rules on hand-made layers ---------------------------------------------------------------------

def _one_update(algo, w, g, mask):
    params, masks, grads = {"l": {"kernel": w}}, {"l": {"kernel": mask}}, {"l": {"kernel": g}}
    state = algo.init(params, masks)
    p, m, _ = jax.jit(algo.update)(state, jax.random.key(0), params, masks, grads)
    return np.asarray(p["l"]["kernel"]), np.asarray(m["l"]["kernel"])


def _distinct(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.permutation(np.prod(shape)) + 1.0).reshape(shape).astype(np.float32) / 10


def test_rigl_under_n_m_drops_layer_wide_then_refills_every_group_by_gradient():
    w, g = _distinct((8, 2), 0) * np.where(np.arange(16).reshape(8, 2) % 3 == 0, -1, 1), _distinct((8, 2), 1)
    mask = np.zeros((8, 2), bool)
    mask[[0, 2, 5, 6], 0] = True
    mask[[1, 3, 4, 7], 1] = True
    algo = dst.algorithms.make("rigl", update_every=1, end_step=10, drop_fraction=0.5, drop_schedule="constant",
                               structure=structures.n_m(2, 4))
    new_w, new_m = _one_update(algo, jnp.asarray(w * mask), jnp.asarray(g), jnp.asarray(mask))
    # The rule: k = int(0.5 * 8) = 4 smallest |w| of the layer leave; then each group of 4 consecutive
    # inputs of each unit grows back to 2 by largest |g| among its weights not kept.
    active = np.flatnonzero(mask)
    dropped = active[np.argsort(np.abs(w.reshape(-1)[active]))[:4]]
    kept = mask.reshape(-1).copy()
    kept[dropped] = False
    kept = kept.reshape(8, 2)
    expected = kept.copy()
    for unit in range(2):
        for start in (0, 4):
            rows = np.arange(start, start + 4)
            free = [r for r in rows if not kept[r, unit]]
            need = 2 - kept[rows, unit].sum()
            for r in sorted(free, key=lambda r: -abs(g[r, unit]))[:need]:
                expected[r, unit] = True
    np.testing.assert_array_equal(new_m, expected)
    assert np.all(new_w[expected & ~kept] == 0) and np.all(new_w[~expected] == 0)
    np.testing.assert_array_equal(new_w[kept], (w * mask)[kept])


def test_rigl_under_fan_in_refills_every_unit_to_its_fan_in():
    w, g = _distinct((6, 3), 2), _distinct((6, 3), 3)
    mask = np.zeros((6, 3), bool)
    mask[[0, 1, 2], 0] = mask[[1, 3, 5], 1] = mask[[0, 4, 5], 2] = True
    algo = dst.algorithms.make("rigl", update_every=1, end_step=10, drop_fraction=0.5, drop_schedule="constant",
                               structure=structures.fan_in())
    _, new_m = _one_update(algo, jnp.asarray(w * mask), jnp.asarray(g), jnp.asarray(mask))
    active = np.flatnonzero(mask)
    dropped = active[np.argsort(w.reshape(-1)[active])[:4]]           # int(0.5 * 9) = 4 smallest
    kept = mask.reshape(-1).copy()
    kept[dropped] = False
    kept = kept.reshape(6, 3)
    expected = kept.copy()
    for unit in range(3):
        free = [r for r in range(6) if not kept[r, unit]]
        for r in sorted(free, key=lambda r: -g[r, unit])[:3 - kept[:, unit].sum()]:
            expected[r, unit] = True
    np.testing.assert_array_equal(new_m, expected)


def test_rigl_under_blocks_drops_and_grows_whole_blocks_by_summed_scores():
    w, g = _distinct((4, 6), 4), _distinct((4, 6), 5)
    blocks = np.array([[1, 0, 1], [1, 1, 0]], bool)                   # 2 x 3 blocks of 2 x 2
    mask = np.kron(blocks, np.ones((2, 2), bool)).astype(bool)
    algo = dst.algorithms.make("rigl", update_every=1, end_step=10, drop_fraction=0.5, drop_schedule="constant",
                               structure=structures.block(2, 2))
    _, new_m = _one_update(algo, jnp.asarray(w * mask), jnp.asarray(g), jnp.asarray(mask))
    l1 = lambda x: np.abs(x).reshape(2, 2, 3, 2).sum(axis=(1, 3))
    # int(0.5 * 16) = 8 weights = 2 blocks of smallest L1 |w| leave; 2 blocks of largest L1 |g| among the
    # blocks inactive after the drop (just-dropped ones included) are grown.
    active = np.flatnonzero(blocks)
    dropped = active[np.argsort(l1(w * mask).reshape(-1)[active])[:2]]
    kept = blocks.reshape(-1).copy()
    kept[dropped] = False
    free = np.flatnonzero(~kept)
    grown = free[np.argsort(-l1(g).reshape(-1)[free])[:2]]
    expected_blocks = kept.copy()
    expected_blocks[grown] = True
    np.testing.assert_array_equal(new_m, np.kron(expected_blocks.reshape(2, 3), np.ones((2, 2))).astype(bool))


# --- the common suite: every algorithm that takes a structure ------------------------------------------

DYNAMIC = ("rigl", "set", "mest")
FAST_CASES = {("rigl", "n_m"), ("rigl", "fan_in"), ("rigl", "block"), ("set", "n_m"), ("mest", "n_m")}
CASES = [pytest.param(a, s, marks=[] if (a, s) in FAST_CASES else [pytest.mark.slow])
         for a in DYNAMIC for s in sorted(STRUCTURES)]


def _structured_start(name, structure_name, seed=0):
    _, params, _, _ = tiny_problem()
    structure = STRUCTURES[structure_name]
    densities = structures.structured_densities(params, 0.75, "uniform", structure)
    masks = dst.init_masks(jax.random.key(seed), params, densities, structure=structure)
    params = dst.apply_masks(params, masks)
    algo = make_algorithm(name, update_every=1, drop_schedule="constant", structure=structure)
    return algo, params, masks


@pytest.mark.parametrize("name, structure_name", CASES)
def test_dynamic_algorithms_keep_the_structure_and_change_the_mask(name, structure_name):
    algo, params, masks = _structured_start(name, structure_name)
    state = algo.init(params, masks)
    update = jax.jit(algo.update)
    counts = {n: int(m.sum()) for n, m in named_leaves(masks).items()}
    for step in range(4):
        grads = jax.tree_util.tree_map(lambda p, s=step: jax.random.normal(jax.random.key(100 + s), p.shape), params)
        old = masks
        params, masks, state = update(state, jax.random.key(step), params, masks, grads)
        for n, m in named_leaves(masks).items():
            if m.ndim == 2:
                assert holds(m, structure_name), (n, step)
                assert int(m.sum()) == counts[n], (n, step)
                assert not np.any(np.asarray(named_leaves(params)[n])[~np.asarray(m)]), (n, step)
        churn = sum(int(jnp.sum(o & ~m)) for o, m in zip(jax.tree_util.tree_leaves(old),
                                                          jax.tree_util.tree_leaves(masks)))
        assert churn > 0, step


# --- what cannot be kept says so -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["granet"])
def test_algorithms_that_cannot_keep_a_structure_say_so(name):
    with pytest.raises(ValueError,
                       match=r"^structure=n_m cannot be kept by \w+(-\w+)?: .+; use structure=unstructured\.$"):
        make_algorithm(name, structure=structures.n_m(2, 4))


def test_rules_that_pick_single_weights_refuse_blocks_and_decay_refuses_structures():
    with pytest.raises(ValueError, match="structure=block cannot be kept by the drop rule sign_split_drop"):
        dst.algorithms.make("set", update_every=1, end_step=10, sign_split=True, structure=structures.block(2, 2))
    with pytest.raises(ValueError, match="structure=fan_in cannot be kept with a sparsity decay"):
        dst.algorithms.make("mest", update_every=1, end_step=10, sparsity=0.9, initial_sparsity=0.5,
                            structure=structures.fan_in())


@pytest.mark.parametrize("pair", [[2, 2], [4, 2], [0, 4], [2.0, 4], [2]])
def test_bad_n_m_is_one_sentence(pair):
    with pytest.raises(ValueError, match=r"^n_m must be two integers \[N, M\] with 0 < N < M; got "):
        structures.make("n_m", n_m=pair)


def test_short_and_long_row_selections_agree(monkeypatch):
    # Rows of at most _PAIRWISE_GROUP elements rank pairwise, longer ones search bits: the same selection.
    from dst import selection
    rng = np.random.default_rng(3)
    scores = jnp.asarray(rng.integers(0, 4, size=(40, 12)).astype(np.float32))    # many ties
    eligible = jnp.asarray(rng.random((40, 12)) < 0.8)
    k = jnp.asarray(rng.integers(0, 13, size=(40, 1)), jnp.int32)
    pairwise = grouped_top_k_mask(scores, eligible, k, jax.random.key(4))
    monkeypatch.setattr(selection, "_PAIRWISE_GROUP", 0)
    searched = grouped_top_k_mask(scores, eligible, k, jax.random.key(4))
    np.testing.assert_array_equal(np.asarray(pairwise), np.asarray(searched))
    assert np.asarray(pairwise).sum(axis=1).tolist() == np.minimum(np.asarray(k)[:, 0],
                                                                   np.asarray(eligible).sum(axis=1)).tolist()


@pytest.mark.parametrize("structure_name", sorted(STRUCTURES))
def test_topkast_forward_sets_have_the_structure_inside_the_backward_set(structure_name):
    _, params, _, _ = tiny_problem()
    structure = STRUCTURES[structure_name]
    densities = structures.structured_densities(params, 0.75, "erk", structure)
    masks = dst.init_masks(jax.random.key(0), params, densities, structure=structure)
    algo = dst.algorithms.make("topkast", sparsity=0.75, backward_sparsity=0.5, update_every=1, end_step=10,
                               structure=structure)
    state = algo.init(params, masks, jax.random.key(1))
    update = jax.jit(algo.update)
    for step in range(2):     # dense storage: the params drift between updates, and A follows |theta|
        params = jax.tree_util.tree_map(lambda p, s=step: p + 0.05 * jax.random.normal(jax.random.key(s), p.shape),
                                        params)
        params, masks, state = update(state, jax.random.key(step), params, masks, params)
        backward = named_leaves(algo.trainable(state, masks))
        for n, m in named_leaves(masks).items():
            if m.ndim == 2:
                assert holds(m, structure_name) and int(m.sum()) == int(round(densities[n] * m.size)), n
                assert not np.any(np.asarray(m) & ~np.asarray(backward[n])), n


@pytest.mark.parametrize("structure_name", ["fan_in", "block"])
def test_gmp_prunes_to_whole_fan_ins_and_whole_blocks(structure_name):
    _, params, _, _ = tiny_problem()
    structure = STRUCTURES[structure_name]
    masks = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    algo = dst.algorithms.make("gmp", sparsity=0.8, update_every=2, end_step=8, distribution="uniform",
                               structure=structure)
    state = algo.init(params, masks)
    update = jax.jit(algo.update)
    previous = masks
    for step in range(9):
        params = jax.tree_util.tree_map(lambda p, s=step: p + 0.01 * jax.random.normal(jax.random.key(s), p.shape),
                                        params)
        params, masks, state = update(state, jax.random.key(step), params, masks, params)
        for n, m in named_leaves(masks).items():
            if m.ndim == 2:
                assert holds(m, structure_name), (n, step)
                assert not np.any(np.asarray(m) & ~np.asarray(named_leaves(previous)[n])), (n, step)   # never regrows
        previous = masks
    final = {n: int(m.sum()) for n, m in named_leaves(masks).items() if m.ndim == 2}
    target = structures.structured_densities(params, 0.8, "uniform", structure)
    assert final == {n: int(round(d * named_leaves(params)[n].size)) for n, d in target.items()}
    with pytest.raises(ValueError, match="structure=n_m cannot be kept by GMP: its cubic schedule"):
        dst.algorithms.make("gmp", sparsity=0.5, update_every=2, end_step=8, structure=structures.n_m(2, 4))


def test_snfs_moves_budget_between_layers_in_whole_blocks():
    algo, params, masks = _structured_start("snfs", "block")
    state = algo.init(params, masks)
    update = jax.jit(algo.update)
    total = sum(int(m.sum()) for m in jax.tree_util.tree_leaves(masks) if m.ndim == 2)
    moved = False
    for step in range(4):
        grads = jax.tree_util.tree_map(lambda p, s=step: jax.random.normal(jax.random.key(100 + s), p.shape) *
                                       (1 + 9 * (p.shape[0] == 32)), params)    # one layer's momentum is larger
        old = {n: int(m.sum()) for n, m in named_leaves(masks).items() if m.ndim == 2}
        params, masks, state = update(state, jax.random.key(step), params, masks, grads)
        new = {n: int(m.sum()) for n, m in named_leaves(masks).items() if m.ndim == 2}
        assert all(holds(m, "block") for m in jax.tree_util.tree_leaves(masks) if m.ndim == 2)
        assert sum(new.values()) == total and all(c % 4 == 0 for c in new.values())
        moved |= new != old
    assert moved      # the budget really moved between layers
    for name in ("n_m", "fan_in"):
        with pytest.raises(ValueError, match=f"structure={name} cannot be kept by SNFS: it moves weights between"):
            make_algorithm("snfs", structure=STRUCTURES[name])


@pytest.mark.parametrize("name", ["snip", "grasp"])
@pytest.mark.parametrize("structure_name", sorted(STRUCTURES))
def test_one_shot_pruning_keeps_each_layers_top_with_the_structure(name, structure_name):
    model, params, x, y = tiny_problem()
    structure = STRUCTURES[structure_name]
    algo = dst.algorithms.make(name, sparsity=0.75, scope="layer", distribution="uniform", batches=1,
                               structure=structure)
    dense = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    masks = dst.train.prune_at_init(algo, jax.random.key(0), params, dense, dst.flax_apply(model), x, y, 32)
    expected = structures.structured_densities(params, 0.75, "uniform", structure)
    for n, m in named_leaves(masks).items():
        if m.ndim == 2:
            assert holds(m, structure_name), n
            assert int(m.sum()) == int(round(expected[n] * m.size)), n
    with pytest.raises(ValueError, match=f"scope=global cannot keep structure={structure_name}"):
        dst.algorithms.make(name, sparsity=0.75, scope="global", structure=structure)
