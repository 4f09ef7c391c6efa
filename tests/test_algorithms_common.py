"""One suite over every registered algorithm: the invariants DESIGN.md fixes for all of them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from algo_helpers import OPTIMIZERS
from algo_helpers import initial_masks
from algo_helpers import make_algorithm
from algo_helpers import tiny_problem

import dst
from dst.masks import named_leaves

ALGORITHMS = dst.algorithms.names()


def _run(name, optimizer="sgd_momentum", steps=8, key=0):
    model, params, x, y = tiny_problem()
    masks = initial_masks(name, params)
    algo = make_algorithm(name)
    tx = OPTIMIZERS[optimizer]()
    state = dst.create_train_state(jax.random.key(key), params, masks, tx, algo)
    step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo))
    history = [state]
    for i in range(steps):
        idx = jnp.arange(32) + 32 * (i % 8)
        state, metrics = step(state, (x[idx], y[idx]))
        assert np.isfinite(float(metrics["loss"]))
        history.append(state)
    return masks, history


def test_registry_lists_the_core_algorithms():
    assert {"dense", "static", "set", "rigl"} <= set(ALGORITHMS)


def test_unknown_algorithm_lists_valid_names():
    with pytest.raises(ValueError, match="algorithm must be one of .*rigl"):
        dst.algorithms.make("rigel")


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_invariants_hold_after_every_step(name, optimizer):
    masks0, history = _run(name, optimizer)
    counts0 = {n: int(m.sum()) for n, m in named_leaves(masks0).items()}
    params_def = jax.tree_util.tree_structure(history[0].params)
    for state in history[1:]:
        assert jax.tree_util.tree_structure(state.masks) == params_def
        for n, m in named_leaves(state.masks).items():
            p = named_leaves(state.params)[n]
            assert m.dtype == jnp.bool_ and m.shape == p.shape
            assert int(m.sum()) == counts0[n], f"{name}: {n} count drifted"
            assert (np.asarray(p)[~np.asarray(m)] == 0).all(), f"{name}: inactive weights of {n} not zero"


@pytest.mark.parametrize("name", ALGORITHMS)
def test_same_key_same_result(name):
    _, a = _run(name, key=3)
    _, b = _run(name, key=3)
    for x, y in zip(jax.tree_util.tree_leaves((a[-1].params, a[-1].masks)),
                    jax.tree_util.tree_leaves((b[-1].params, b[-1].masks))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n not in ("dense", "static")])
def test_dynamic_algorithms_change_topology_only_on_schedule(name):
    masks0, history = _run(name, steps=6)
    changed = [not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree_util.tree_leaves(history[i].masks), jax.tree_util.tree_leaves(history[i + 1].masks)))
        for i in range(len(history) - 1)]
    # update_every=2 from step 0: calls 0, 2, 4 update; 1, 3, 5 must not.
    assert changed[1::2] == [False, False, False]
    assert any(changed[0::2])


@pytest.mark.parametrize("name", ALGORITHMS)
def test_whole_run_traces_the_step_once(name):
    model, params, x, y = tiny_problem()
    algo = make_algorithm(name)
    tx = OPTIMIZERS["adam"]()
    state = dst.create_train_state(jax.random.key(0), params, initial_masks(name, params), tx, algo)
    inner = dst.make_train_step(dst.flax_apply(model), tx, algo)
    traces = []

    def counted(state, batch):
        traces.append(1)
        return inner(state, batch)

    epoch = dst.train_epoch_fn(counted, batch_size=32)
    for e in range(3):
        state, _ = epoch(state, x, y, jax.random.key(e))
    assert len(traces) == 1
    assert int(state.step) == 3 * (x.shape[0] // 32)
