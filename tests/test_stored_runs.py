"""Training on the csr and condensed backends equals training masked (issue "Truly sparse execution").

For each algorithm x structure x backend, one masked run and one stored run start from the same seed and
take the same steps, with several topology updates among them. After every step the stored run's dense
view (:func:`dst.train.stored.expand_state`) must have exactly the masked run's masks and params within
1e-5, and its optimizer moments must equal the masked run's at the stored weights: the backend changes
where weights live, never which weights live.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from algo_helpers import make_algorithm
from algo_helpers import masks_for

import dst
from dst import structures
from dst.masks import named_leaves
from dst.models import MLP
from dst.train import stored
from dst.train.checkpoint import RunCheckpoints

STEPS, UPDATE_EVERY = 9, 3

# `make test` runs RigL on csr (the dense-gradient path, the slot moves of a fixed capacity); `make test-slow`
# (and .ci/run) runs the rest: every algorithm, condensed, SRigL's ablation.
slow = pytest.mark.slow
CASES = [
    pytest.param("static", None, "csr", marks=slow),
    pytest.param("set", None, "csr", marks=slow),
    ("rigl", None, "csr"),
    pytest.param("mest", None, "csr", marks=slow),
    pytest.param("srigl", structures.fan_in(), "csr", marks=slow),
    # SRigL from storage with units ablated (gamma 0.9 ablates 22, 9 and 2 units of the three layers).
    ("srigl_ablating", structures.fan_in(), "csr"),
    # ... and its grown weights drawn normal (the dense draw at their slots, the kept weights' RMS).
    pytest.param("srigl_normal", structures.fan_in(), "csr", marks=slow),
    pytest.param("rigl", structures.fan_in(), "condensed", marks=slow),
    pytest.param("set", structures.n_m(2, 4), "condensed", marks=slow),
    # Block structure: updated on the dense view (blocks span output units), not from storage.
    pytest.param("rigl", structures.block(2, 2), "csr", marks=slow),
    # grow_init=normal from storage: the dense draw at the grown weights' positions.
    pytest.param("set_normal", None, "csr", marks=slow),
    # Counts that fall: the freed slots become padding inside the layer's capacity.
    ("gmp", None, "csr"),
    pytest.param("gmp_global", None, "csr", marks=slow),
    pytest.param("mest_decay", None, "csr", marks=slow),
    pytest.param("granet", None, "csr", marks=slow),
    # Counts that move between layers: spare slots (capacity 2), the dense view at every step.
    ("snfs", None, "csr"),
    # SNFS's grown weights drawn normal from storage (the dense draw at their positions).
    pytest.param("snfs_normal", None, "csr", marks=slow),
]


def problem(structure, seed=0):
    model = MLP(hidden=(48, 24), num_classes=8)
    params = model.init(jax.random.key(seed), jnp.zeros((1, 32)))["params"]
    layers = dst.sparsifiable_layers(params)
    masks = masks_for(params, 0.75, structure)
    x = jax.random.normal(jax.random.key(2), (STEPS, 16, 32))
    y = jax.random.randint(jax.random.key(3), (STEPS, 16), 0, 8)
    return model, params, masks, layers, x, y


def algorithm(name, structure):
    kwargs = dict(update_every=UPDATE_EVERY, end_step=1000, drop_fraction=0.3)
    if name == "set_normal":      # grown weights: the dense layer's normal draw at their positions, from storage
        return dst.algorithms.make("set", **kwargs, grow_init="normal", structure=structure)
    if name.startswith("gmp"):    # from the problem's 75% towards 90%, pruning at every update
        return dst.algorithms.make("gmp", sparsity=0.9, initial_sparsity=0.75, update_every=UPDATE_EVERY,
                                   end_step=STEPS, scope="global" if name == "gmp_global" else "layer")
    if name == "granet":          # global pruning from 75% towards 90%, then regeneration in each layer
        return dst.algorithms.make("granet", sparsity=0.9, initial_sparsity=0.75, update_every=UPDATE_EVERY,
                                   end_step=STEPS, drop_fraction=0.3)
    if name == "srigl_normal":
        return dst.algorithms.make("srigl", **kwargs, min_salient_fraction=0.9, structure=structure, grow_init="normal")
    if name == "snfs_normal":
        return dst.algorithms.make("snfs", **kwargs, grow_init="normal")
    if name == "srigl_ablating":
        return dst.algorithms.make("srigl", **kwargs, min_salient_fraction=0.9, structure=structure)
    if name == "mest_decay":      # MEST's decay: each update drops more than it grows
        return dst.algorithms.make("mest", **kwargs, sparsity=0.9, initial_sparsity=0.75, decay_end_step=STEPS)
    return dst.algorithms.make(name, **({} if name == "static" else kwargs), structure=structure)


@pytest.mark.parametrize("name,structure,backend", CASES)
def test_a_stored_run_makes_the_masked_runs_decisions(name, structure, backend):
    model, params, masks, layers, x, y = problem(structure)
    algo = algorithm(name, structure)
    tx = optax.sgd(0.05, momentum=0.9)
    storage = stored.make_storage(model, backend, masks, layers, capacity=stored.default_capacity(algo))
    assert set(storage.layout_of) == set(layers)     # every kernel of the MLP is fully connected
    masked_step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo).full)
    stored_step = jax.jit(dst.make_train_step(None, tx, algo, storage=storage).full)
    a = dst.create_train_state(jax.random.key(4), params, masks, tx, algo)
    b = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, storage=storage)
    updates = 0
    for i in range(STEPS):
        a, ma = masked_step(a, (x[i], y[i]))
        b, mb = stored_step(b, (x[i], y[i]))
        updates += int(ma["updated"])
        assert bool(mb["updated"]) == bool(ma["updated"])
        assert all(int(excess) == 0 for excess in mb.get("overflow", {}).values())
        np.testing.assert_allclose(mb["loss"], ma["loss"], rtol=1e-5)
        dense_p, dense_m = stored.expand_state(storage, b.params, b.live, b.topologies)
        jax.tree_util.tree_map(np.testing.assert_array_equal, dense_m, a.masks)
        jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, atol=1e-5), dense_p, a.params)
    if algo.dynamic:
        assert updates == STEPS // UPDATE_EVERY
        assert not np.array_equal(named_leaves(a.masks)[layers[0]], named_leaves(masks)[layers[0]])
    if algo.counts == "move":   # some layer gained weights, into its spare slots
        assert any(np.sum(named_leaves(a.masks)[n]) > np.sum(named_leaves(masks)[n]) for n in layers)
    # ITOP's ever-active set, after the masked run settles its last update.
    settled = dst.train.settle_topology(a)[0]
    jax.tree_util.tree_map(np.testing.assert_array_equal, b.ever_active, settled.ever_active)
    # Momentum per stored weight: the stored run's, laid out densely, is the masked run's at the active weights.
    expected = jax.tree_util.tree_map(lambda t, m: np.where(m, t, 0), a.opt_state[0].trace, a.masks)
    got, _ = stored.expand_state(storage, b.opt_state[0].trace, b.live, b.topologies)
    jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, atol=1e-5), got, expected)
    paths = {"rigl": "from storage", "mest_decay": "from storage", "set_normal": "from storage", "gmp": "in place",
             "gmp_global": "in place", "snfs": "momentum, then from storage",
             "snfs_normal": "momentum, then from storage", "granet": "in place, then from storage"}
    if structure is not None:   # among the structured cases, SRigL updates from storage; the rest are above
        paths = {"srigl": "from storage", "srigl_ablating": "from storage", "srigl_normal": "from storage"}
    if name in paths:
        assert stored.update_path(algo, storage)[0] == paths[name]
    if name.startswith("srigl"):   # the ablated units too
        jax.tree_util.tree_map(np.testing.assert_array_equal, b.algo_state.extra["ablated"],
                               a.algo_state.extra["ablated"])
    if name == "srigl_ablating":
        assert all(int(np.sum(u)) > 0 for u in a.algo_state.extra["ablated"].values())
    if name.startswith("gmp"):   # pruning only: in place, the topology as it started
        start = stored.compress_state(storage, params, masks)[2]
        jax.tree_util.tree_map(np.testing.assert_array_equal, b.topologies, start)


@pytest.mark.parametrize("structure", [None, pytest.param(structures.n_m(1, 4), marks=slow)],
                         ids=["unstructured", "n_m"])
def test_top_kast_on_csr_makes_the_masked_runs_decisions(structure):
    """Top-KAST's backward set in the slots, its forward set flagged among them, the rest dense between updates:
    the same forward and backward sets, losses and weights as the masked run, update after update. (Plain SGD:
    a weight that leaves B and comes back restarts its moments on csr, where the masked run's have decayed.)
    Unstructured, A is ranked among B's slots; under N:M, A is kept by the structure over the dense theta and read
    at B's slots."""
    model, params, masks, layers, x, y = problem(structure)
    algo = dst.algorithms.make("topkast", sparsity=0.75, backward_sparsity=0.5, update_every=UPDATE_EVERY,
                               end_step=1000, penalty=1e-2, structure=structure)
    tx = optax.sgd(0.3)
    storage = stored.make_storage(model, "csr", stored.held_masks(algo, params, masks), layers)
    for name in layers:   # the capacity is the backward set's count (ERK at 50%), not the forward set's
        backward_count = int(np.sum(named_leaves(stored.held_masks(algo, params, masks))[name]))
        assert storage.layout_of[name].count == backward_count > int(np.sum(named_leaves(masks)[name]))
    assert storage.layout_of[layers[0]].count < named_leaves(params)[layers[0]].size   # weights wait outside B
    assert stored.update_path(algo, storage)[0] == "theta, then from storage"     # stored_backward.ranked_in_slots
    masked_step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo).full)
    stored_step = jax.jit(dst.make_train_step(None, tx, algo, storage=storage).full)
    a = dst.create_train_state(jax.random.key(4), params, masks, tx, algo)
    b = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, storage=storage)
    for i in range(STEPS):
        a, ma = masked_step(a, (x[i], y[i]))
        b, mb = stored_step(b, (x[i], y[i]))
        assert bool(mb["updated"]) == bool(ma["updated"])
        np.testing.assert_allclose(mb["loss"], ma["loss"], rtol=1e-5)
        held = b.algo_state.extra["backward"]
        theta, backward = stored.expand_state(storage, b.params, held, b.topologies)
        # theta: the slots' values on B, the outside store's (theta as of the last update) elsewhere
        held_dense = named_leaves(backward)
        theta = {n: np.where(held_dense[n], w, b.algo_state.extra["outside"][n]) if n in layers else np.asarray(w)
                 for n, w in named_leaves(theta).items()}
        _, forward = stored.expand_state(storage, b.params, b.live, b.topologies)
        jax.tree_util.tree_map(np.testing.assert_array_equal, forward, a.masks)
        jax.tree_util.tree_map(np.testing.assert_array_equal, backward, a.algo_state.extra["backward"])
        for name, w in named_leaves(a.params).items():   # outside B: the outside store is the masked run's
            np.testing.assert_allclose(theta[name], w, atol=1e-5)
    first = layers[0]
    assert not np.array_equal(named_leaves(a.masks)[first], named_leaves(masks)[first])
    assert not np.array_equal(named_leaves(a.algo_state.extra["backward"])[first],
                              named_leaves(stored.held_masks(algo, params, masks))[first])


def test_top_kast_is_refused_on_condensed():
    algo = make_algorithm("topkast")
    stored.check_algorithm(algo, "csr")
    with pytest.raises(ValueError, match=r"sparsity\.backend=condensed .*backward set.*use sparsity\.backend=csr"):
        stored.check_algorithm(algo, "condensed")


@pytest.mark.parametrize("name", ["gmp", "granet", "mest", "imp", "snfs"])
def test_counts_that_fall_or_move_run_on_csr_and_not_on_condensed(name):
    algo = make_algorithm(name, **({"sparsity": 0.9, "initial_sparsity": 0.8} if name == "mest" else {}))
    assert algo.counts == ("move" if name == "snfs" else "fall")
    stored.check_algorithm(algo, "csr")
    with pytest.raises(ValueError, match=r"sparsity\.backend=condensed keeps every unit's fan-in"):
        stored.check_algorithm(algo, "condensed")


@pytest.mark.slow
@pytest.mark.parametrize("name,backend", [("rigl", "condensed"), ("topkast", "csr"), ("snfs", "csr")])
def test_a_stored_state_round_trips_through_a_checkpoint_and_trains_on_identically(tmp_path, name, backend):
    # Top-KAST's state holds its backward set by slot and the weights outside it; SNFS's its dense momentum.
    structure = structures.fan_in() if backend == "condensed" else None
    model, params, masks, layers, x, y = problem(structure)
    algo = algorithm(name, structure) if name != "topkast" else dst.algorithms.make(
        "topkast", sparsity=0.75, backward_sparsity=0.5, update_every=UPDATE_EVERY, end_step=1000)
    tx = optax.adam(1e-2)
    storage = stored.make_storage(model, backend, stored.held_masks(algo, params, masks), layers,
                                  capacity=stored.default_capacity(algo))
    step = jax.jit(dst.make_train_step(None, tx, algo, storage=storage).full)
    state = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, storage=storage)
    for i in range(4):     # past the update at step 3: the topology differs from the initial one
        state, _ = step(state, (x[i], y[i]))
    checkpoints = RunCheckpoints(tmp_path / "checkpoints")
    checkpoints.save(1, state, jax.random.key(9), {"fingerprint": {}})
    fresh = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, storage=storage)
    restored, _, _ = checkpoints.restore(1, fresh, jax.random.key(9), {})
    checkpoints.close()
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.random.key_data(restored.rng),
                           jax.random.key_data(state.rng))
    same = lambda a, b: jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    same(restored._replace(rng=None), state._replace(rng=None))
    for i in range(4, STEPS):
        state, _ = step(state, (x[i], y[i]))
        restored, _ = step(restored, (x[i], y[i]))
    same(restored._replace(rng=None), state._replace(rng=None))


def test_an_algorithm_that_trains_outside_its_mask_needs_nested_rules_to_be_stored():
    """A backward set is stored through the algorithm's nested rules (Top-KAST's); one without them is refused."""
    algo = make_algorithm("topkast")._replace(nested_rules=None)
    with pytest.raises(ValueError, match=r"sparsity\.backend=csr stores a backward set through an algorithm's "
                                         r"nested_rules .*use sparsity\.backend=masked\.$"):
        stored.check_algorithm(algo, "csr", "my_algorithm")


def test_a_stored_states_slot_flags_are_not_called_masks():
    """A stored layer's ``live`` leaf flags its slots (padding False), so ``state.masks`` refuses on a stored run
    and reads the masks on a masked one; the dense view has the masked run's masks."""
    model, params, masks, layers, x, y = problem(None)
    algo = algorithm("gmp", None)     # its counts fall: padding slots appear
    tx = optax.sgd(0.05)
    storage = stored.make_storage(model, "csr", masks, layers)
    a = dst.create_train_state(jax.random.key(4), params, masks, tx, algo)
    b = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, storage=storage)
    assert a.masks is a.live
    masked_step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo).full)
    stored_step = jax.jit(dst.make_train_step(None, tx, algo, storage=storage).full)
    for i in range(STEPS):
        a, _ = masked_step(a, (x[i], y[i]))
        b, _ = stored_step(b, (x[i], y[i]))
    with pytest.raises(AttributeError, match="slot flags in .live, not masks"):
        _ = b.masks
    for name in layers:
        flags = np.asarray(named_leaves(b.live)[name])
        assert flags.shape == (storage.layout_of[name].count,)    # one flag per slot, not per position
        assert flags.sum() == np.asarray(named_leaves(a.masks)[name]).sum() < flags.size   # padding is False
    jax.tree_util.tree_map(np.testing.assert_array_equal, stored.dense_view(storage, b).masks, a.masks)
