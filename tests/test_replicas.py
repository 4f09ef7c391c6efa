"""Seeds in one program: vmapped replicas match their single runs, and the schedule stays unbatched so
the mask update stays a conditional instead of a select that would run it every step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from algo_helpers import make_algorithm
from algo_helpers import tiny_problem

import dst
from dst.models import MLP
from dst.train.replicas import replica_axes
from dst.train.replicas import replicated_epoch_fn
from dst.train.replicas import stack_replicas
from dst.train.replicas import unstack_replica

SEEDS = (0, 3)


def replica_start(name, seed, model, tx, algo, dim=64):
    params = model.init(jax.random.key(seed), jnp.zeros((1, dim)))["params"]
    densities = dst.layer_densities(params, 0.8, "erk")
    masks = dst.init_masks(jax.random.key(100 + seed), params, densities)
    return dst.create_train_state(jax.random.key(200 + seed), params, masks, tx, algo)


@pytest.mark.parametrize("name", ["rigl", pytest.param("set", marks=pytest.mark.slow),
                                  pytest.param("snfs", marks=pytest.mark.slow)])
def test_each_replica_matches_its_single_run(name):
    model, _, x, y = tiny_problem()
    algo = make_algorithm(name, update_every=3, end_step=20)
    tx = optax.sgd(0.05, momentum=0.9)
    step = dst.make_train_step(dst.flax_apply(model), tx, algo)
    # Each replica trains on its own subset and order of the shared data.
    index = jnp.stack([jax.random.permutation(jax.random.key(7 + s), x.shape[0])[:224] for s in SEEDS])
    single = dst.train_epoch_fn(step, 32)
    replicated = replicated_epoch_fn(step, 32)
    states = [replica_start(name, s, model, tx, algo) for s in SEEDS]
    stacked = stack_replicas(states)
    for e in range(2):
        keys = jnp.stack([jax.random.fold_in(jax.random.key(s), e) for s in SEEDS])
        stacked, m = replicated(stacked, x, y, keys, index)
        for r in range(len(SEEDS)):
            states[r], ms = single(states[r], x[index[r]], y[index[r]], keys[r])
            mine = unstack_replica(stacked, r)
            for a, b in zip(jax.tree_util.tree_leaves(mine.masks), jax.tree_util.tree_leaves(states[r].masks)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree_util.tree_leaves(mine.params), jax.tree_util.tree_leaves(states[r].params)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
            np.testing.assert_allclose(np.asarray(m["loss"][r]), np.asarray(ms["loss"]), rtol=2e-5, atol=2e-6)
    assert int(stacked.step) == 14 and jnp.ndim(stacked.step) == 0
    a, b = (np.asarray(unstack_replica(stacked, r).masks["Dense_0"]["kernel"]) for r in range(2))
    assert not np.array_equal(a, b)                              # replicas really differ


def _cases_in(lowered_text: str) -> int:
    return lowered_text.count("stablehlo.case")


def test_the_update_stays_a_conditional_under_vmap():
    model = MLP(hidden=(32, 16), num_classes=10)
    _, _, x, y = tiny_problem()
    algo = make_algorithm("set", update_every=3, end_step=20)
    tx = optax.sgd(0.05)
    step = dst.make_train_step(dst.flax_apply(model), tx, algo)
    stacked = stack_replicas([replica_start("set", s, model, tx, algo) for s in SEEDS])
    keys = jnp.stack([jax.random.key(s) for s in SEEDS])
    index = jnp.stack([jnp.arange(256)] * 2)
    shared = replicated_epoch_fn(step, 32).lower(stacked, x, y, keys, index).as_text()

    # Negative control: the same epoch with the schedule batched like everything else.
    from dst.train.epoch import epoch_body

    batched_state = jax.tree_util.tree_map(lambda v: jnp.stack([v, v]) if jnp.ndim(v) == 0 else v, stacked)
    body = epoch_body(step, 32)
    batched = jax.jit(jax.vmap(body, in_axes=(0, None, None, 0, 0))).lower(
        batched_state, x, y, keys, index).as_text()
    assert _cases_in(shared) > _cases_in(batched)
    assert replica_axes(stacked).step is None and replica_axes(stacked).algo_state.updated is None
