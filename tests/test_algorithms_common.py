"""One suite over every registered algorithm: the invariants docs/design.md fixes for all of them (its
sections Masks and The algorithm protocol)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from algo_helpers import FAST_ALGORITHMS
from algo_helpers import PER_LAYER_CONSTANT
from algo_helpers import SHRINKING
from algo_helpers import TOTAL_CONSTANT
from algo_helpers import WITHIN_BUDGET
from algo_helpers import every_algorithm
from algo_helpers import make_algorithm
from algo_helpers import per_algorithm
from algo_helpers import start_state

import dst
from dst.masks import named_leaves

ALGORITHMS = dst.algorithms.names()
SPARSE = ("Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel")


@functools.cache
def _start(name, optimizer, key, overrides):
    return start_state(name, optimizer, key, **dict(overrides))


@functools.cache
def _jitted_step(name, optimizer, overrides):
    """One jitted step per algorithm, optimizer and settings: the tests of one algorithm (one worker's
    group) trace and compile it once. The state's key is an argument, not part of the program."""
    model, _, _, algo, tx, _ = _start(name, optimizer, 0, overrides)
    return jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo))


def _run(name, optimizer="sgd_momentum", steps=8, key=0, **overrides):
    overrides = tuple(sorted(overrides.items()))
    model, x, y, algo, tx, state = _start(name, optimizer, key, overrides)
    step = _jitted_step(name, optimizer, overrides)
    history = [state]
    for i in range(steps):
        idx = jnp.arange(32) + 32 * (i % 8)
        state, metrics = step(state, (x[idx], y[idx]))
        assert np.isfinite(float(metrics["loss"]))
        history.append(state)
    return algo, history


def _counts(masks):
    return {n: int(m.sum()) for n, m in named_leaves(masks).items()}


def test_every_algorithm_is_classified():
    assert set(ALGORITHMS) == PER_LAYER_CONSTANT | TOTAL_CONSTANT | SHRINKING | WITHIN_BUDGET
    assert {"dense", "static", "set", "rigl", "snfs", "gmp", "snip", "grasp", "mest", "granet",
            "topkast"} <= set(ALGORITHMS)


def test_unknown_algorithm_lists_valid_names():
    with pytest.raises(ValueError, match="algorithm must be one of .*rigl"):
        dst.algorithms.make("rigel")


# Every algorithm under SGD with momentum, Adam and AdamW (whose moments the trainer resets for grown
# weights). `make test` runs the algorithms of distinct state kinds (FAST_ALGORITHMS), and AdamW's decay
# only on the two storages (masked: RigL; dense with a backward set: Top-KAST); `make test-slow` the rest.
ADAMW_FAST = ("rigl", "topkast")
INVARIANT_CASES = [per_algorithm(n, opt, slow=n not in FAST_ALGORITHMS)
                   for opt in ("sgd_momentum", "adam") for n in ALGORITHMS] + [
    per_algorithm(n, "adamw", slow=n not in ADAMW_FAST) for n in ALGORITHMS]


@pytest.mark.parametrize("name, optimizer", INVARIANT_CASES)
def test_invariants_hold_after_every_step(name, optimizer):
    algo, history = _run(name, optimizer)
    counts0 = _counts(history[0].masks)
    params_def = jax.tree_util.tree_structure(history[0].params)
    previous = history[0]
    for state in history[1:]:
        assert jax.tree_util.tree_structure(state.masks) == params_def
        counts = _counts(state.masks)
        for n, m in named_leaves(state.masks).items():
            p = named_leaves(state.params)[n]
            assert m.dtype == jnp.bool_ and m.shape == p.shape
            if algo.trainable is None:
                assert (np.asarray(p)[~np.asarray(m)] == 0).all(), f"{name}: inactive weights of {n} not zero"
            else:  # dense storage: weights outside the previous backward set were not trained
                outside = ~np.asarray(named_leaves(algo.trainable(previous.algo_state, previous.masks))[n])
                np.testing.assert_array_equal(np.asarray(p)[outside],
                                              np.asarray(named_leaves(previous.params)[n])[outside])
        if name in PER_LAYER_CONSTANT:
            assert counts == counts0, f"{name}: a layer's count drifted"
        elif name in TOTAL_CONSTANT:
            assert sum(counts[n] for n in SPARSE) == sum(counts0[n] for n in SPARSE)
        elif name in WITHIN_BUDGET:
            assert all(counts[n] <= counts0[n] for n in SPARSE)
        else:
            assert all(counts[n] <= _counts(previous.masks)[n] for n in SPARSE)
        previous = state


@pytest.mark.parametrize("name", [per_algorithm(n) for n in sorted(SHRINKING)])
def test_gradual_pruning_reaches_its_final_sparsity_at_end_step(name):
    _, history = _run(name, steps=10, end_step=8)
    params = history[0].params
    sizes = {n: x.size for n, x in named_leaves(params).items()}
    counts = _counts(history[-1].masks)
    if name == "granet":   # one global threshold: only the total is fixed
        assert sum(counts[n] for n in SPARSE) == round(0.2 * sum(sizes[n] for n in SPARSE))
    else:                  # per layer: each reaches its ERK count at 80% sparsity
        assert {n: counts[n] for n in SPARSE} == dst.algorithms.targets.final_counts(params, 0.8, "erk")
    assert _counts(history[-2].masks) == counts   # the last pruning step is end_step itself



@pytest.mark.parametrize("name", every_algorithm(ALGORITHMS))
def test_same_key_same_result(name):
    _, a = _run(name, key=3)
    _, b = _run(name, key=3)
    for x, y in zip(jax.tree_util.tree_leaves((a[-1].params, a[-1].masks)),
                    jax.tree_util.tree_leaves((b[-1].params, b[-1].masks))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", every_algorithm(("set", "rigl", "snfs", "mest", "granet", "topkast")))
def test_dynamic_algorithms_change_topology_only_on_schedule(name):
    _, history = _run(name, steps=6)
    changed = [not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree_util.tree_leaves(history[i].masks), jax.tree_util.tree_leaves(history[i + 1].masks)))
        for i in range(len(history) - 1)]
    # update_every=2 from step 0: calls 0, 2, 4 update; 1, 3, 5 must not.
    assert changed[1::2] == [False, False, False]
    assert any(changed[0::2])


@pytest.mark.parametrize("name", every_algorithm(ALGORITHMS))
def test_whole_run_traces_the_step_once(name):
    # The program of `_epoch_of(name)`: the worker's compilation cache has it, and the count is of traces.
    model, x, y, algo, tx, state = start_state(name)
    apply_fn = dst.flax_apply(model)
    traces = []

    def counted(*args):
        traces.append(1)
        return apply_fn(*args)

    step = dst.make_train_step(counted, tx, algo)
    epoch = dst.train_epoch_fn(step, batch_size=32)
    state, _ = epoch(state, x, y, jax.random.key(0))
    # The scan traces the step once. The quiet path traces the model in each body it compiles, all in
    # this first compile: the full step (and one shape evaluation of it) and the plain step (in the
    # loop before each update and in the loop after the last).
    first = len(traces)
    assert first == (4 if step.has_quiet_path else 1)
    for e in (1, 2):
        state, _ = epoch(state, x, y, jax.random.key(e))
    assert len(traces) == first and epoch._cache_size() == 1
    assert int(state.step) == 3 * (x.shape[0] // 32)


@pytest.mark.parametrize("name", every_algorithm([n for n in ALGORITHMS if make_algorithm(n).quiet is not None]))
def test_quiet_calls_are_exactly_skipped_calls(name):
    # `quiet(state)` promises that many update calls change nothing but what `skip` advances; the
    # trainer relies on it to leave those calls out. Checked call by call around a shifted schedule.
    model, x, y, algo, tx, state = start_state(name, update_every=3, start_step=2, end_step=14)
    grads = jax.grad(lambda p: dst.train.cross_entropy(dst.flax_apply(model)(p, {}, x[:32], True, None)[0],
                                                       y[:32]))(state.params)
    update = jax.jit(algo.update)
    algo_state, params, masks = state.algo_state, state.params, state.masks
    quiet, acted = [], []
    for t in range(18):
        quiet.append(int(algo.quiet(algo_state)))
        new_params, new_masks, new_state = update(algo_state, jax.random.key(t), params, masks, grads)
        acted.append(bool(new_state.updated))
        if quiet[-1] > 0:
            expected = algo.skip(algo_state, 1)
            for a, b in zip(jax.tree_util.tree_leaves((new_params, new_masks, new_state)),
                            jax.tree_util.tree_leaves((params, masks, expected))):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        params, masks, algo_state = new_params, new_masks, new_state
    due = [t for t in range(18) if acted[t]]
    # The schedules: every 3 steps from 2, before 14 (pruning algorithms: up to and including 14).
    # (IMP's update only records its rewind weights: the topology changes between levels, not in them.)
    assert due == ([] if algo.levels else [2, 5, 8, 11, 14] if name in ("gmp", "granet") else [2, 5, 8, 11])
    assert quiet == [min([u - t for u in due if u >= t], default=dst.schedules.NEVER) for t in range(18)]


# The variants of the suite (optax's alias_test runs jit / no-jit / pmap over every optimizer): seeds as
# vmapped replicas, and a checkpoint round trip, for every algorithm. Sharding over devices needs a fresh
# process (tests/test_devices.py runs every algorithm there).

VARIANTS = every_algorithm(ALGORITHMS)


@functools.cache
def _epoch_of(name):
    """``(start_state(name), jitted epoch at batch 32)``, shared by the variants so each compiles once."""
    model, x, y, algo, tx, start = start_state(name)
    step = dst.make_train_step(dst.flax_apply(model), tx, algo)
    return (model, x, y, algo, tx, start), step, dst.train_epoch_fn(step, 32)


def _equal_trees(a, b, rtol=0.0, atol=0.0):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        if jnp.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", VARIANTS)
def test_vmapped_replicas_match_their_single_runs(name):
    from dst.train.replicas import replicated_epoch_fn
    from dst.train.replicas import stack_replicas
    from dst.train.replicas import unstack_replica

    (model, x, y, algo, tx, start), step, one = _epoch_of(name)
    singles = [start, start_state(name, key=5)[-1]]
    stacked = stack_replicas(singles)
    keys = jnp.stack([jax.random.key(11), jax.random.key(12)])
    # Each replica trains on its own order of the shared data (a subset in a validation-split run).
    index = jnp.stack([jax.random.permutation(jax.random.key(7 + r), x.shape[0]) for r in range(2)])
    stacked, metrics = replicated_epoch_fn(step, 32)(stacked, x, y, keys, index)
    for r, state in enumerate(singles):
        state, single_metrics = one(state, x[index[r]], y[index[r]], keys[r])
        mine = unstack_replica(stacked, r)
        _equal_trees(mine.masks, state.masks)
        _equal_trees(mine.params, state.params, rtol=2e-5, atol=2e-6)
        _equal_trees(mine.algo_state, state.algo_state, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(metrics["loss"][r], single_metrics["loss"], rtol=2e-5, atol=2e-6)
    assert jnp.ndim(stacked.step) == 0      # one shared clock: the schedule is not a batched value
    if algo.dynamic and not algo.levels:   # the replicas really differ: their own init, masks and data
        # (IMP's level 0 is dense in both: its masks differ from level 1 on, tests/test_imp.py)
        a, b = (np.asarray(unstack_replica(stacked, r).masks["Dense_0"]["kernel"]) for r in range(2))
        assert not np.array_equal(a, b)


@pytest.mark.parametrize("name", VARIANTS)
def test_a_checkpoint_round_trip_continues_exactly(name, tmp_path):
    from dst.train.checkpoint import RunCheckpoints

    (model, x, y, algo, tx, start), _, epoch = _epoch_of(name)
    state, _ = epoch(start, x, y, jax.random.key(1))
    saved = RunCheckpoints(tmp_path / "checkpoints")
    saved.save(1, state, jax.random.key(2), {"fingerprint": {"algorithm": name}})
    saved.close()
    # A fresh manager reads it back into a freshly initialised state, as a resumed run does.
    restored, data_key, meta = RunCheckpoints(tmp_path / "checkpoints").restore(
        1, start, jax.random.key(0), {"algorithm": name})
    assert meta["fingerprint"] == {"algorithm": name}
    _equal_trees(restored, state)
    _equal_trees(data_key, jax.random.key(2))
    (a, ma), (b, mb) = epoch(state, x, y, data_key), epoch(restored, x, y, data_key)
    _equal_trees(a, b)
    _equal_trees(ma, mb)
