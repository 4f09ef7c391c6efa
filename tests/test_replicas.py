"""Seeds in one program: vmapped replicas match their single runs, and the schedule stays unbatched so
the mask update stays a conditional instead of a select that would run it every step."""

import jax
import jax.numpy as jnp
import optax
from algo_helpers import make_algorithm
from algo_helpers import tiny_problem

import dst
from dst.models import MLP
from dst.train.replicas import replica_axes
from dst.train.replicas import replicated_epoch_fn
from dst.train.replicas import stack_replicas

SEEDS = (0, 3)


def replica_start(name, seed, model, tx, algo, dim=64):
    params = model.init(jax.random.key(seed), jnp.zeros((1, dim)))["params"]
    densities = dst.layer_densities(params, 0.8, "erk")
    masks = dst.init_masks(jax.random.key(100 + seed), params, densities)
    return dst.create_train_state(jax.random.key(200 + seed), params, masks, tx, algo)


# That each replica equals its single run is checked for every algorithm in
# tests/test_algorithms_common.py (test_vmapped_replicas_match_their_single_runs).


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
