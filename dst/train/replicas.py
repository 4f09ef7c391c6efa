"""Many seeds in one compiled program: replicas of a run stacked on a leading axis under ``jax.vmap``.

Each replica has its own params, masks, optimizer and algorithm state, step key and data order; they
share one copy of the data (each trains on ``x[index_r]``) and, crucially, the *schedule*: the step
counters and the update flag (``TrainState.step``, ``algo_state.step``, ``algo_state.updated``) are
not batched. The mask update sits under ``lax.cond`` on those counters; if they were batched values,
vmap would turn the cond into a select that runs the update at every step for every replica. Kept
unbatched, the cond stays a cond (the update runs only at its scheduled steps) and the quiet-step
loop keeps its trip counts.

Example::

    states = [dst.create_train_state(jax.random.key(s), ...) for s in seeds]
    stacked = stack_replicas(states)
    epoch = replicated_epoch_fn(step, batch_size=128)
    stacked, metrics = epoch(stacked, x, y, keys, index)    # keys (R,), index (R, n)
    replica_1 = unstack_replica(stacked, 1)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dst.masks import path_name
from dst.train.epoch import Augment
from dst.train.epoch import epoch_body
from dst.train.state import TrainState
from dst.train.step import TrainStep

# Leaves every replica shares: the schedule (see the module docstring).
SCHEDULE_LEAVES = ("step", "algo_state/step", "algo_state/updated", "algo_state/extra/level")  # IMP's level


def _is_schedule(path) -> bool:
    return path_name(path) in SCHEDULE_LEAVES


def replica_axes(state: TrainState):
    """``vmap`` axes of a stacked state: ``None`` for the shared schedule, ``0`` for everything else."""
    return jax.tree_util.tree_map_with_path(lambda p, _: None if _is_schedule(p) else 0, state)


def stack_replicas(states: list[TrainState]) -> TrainState:
    """One state with a leading replica axis; the schedule leaves must agree and stay unstacked."""
    def stack(path, *leaves):
        if _is_schedule(path):
            first = np.asarray(leaves[0])
            if any(not np.array_equal(first, np.asarray(x)) for x in leaves[1:]):
                raise ValueError(f"replicas disagree on {path_name(path)}; they must share the schedule.")
            return leaves[0]
        return jnp.stack(leaves)

    return jax.tree_util.tree_map_with_path(stack, *states)


def unstack_replica(state: TrainState, r: int) -> TrainState:
    """Replica ``r`` of a stacked state, as a plain single-run state."""
    return jax.tree_util.tree_map_with_path(lambda p, x: x if _is_schedule(p) else x[r], state)


def replicated_epoch_fn(step: TrainStep | Callable, batch_size: int, augment: Augment | None = None,
                        max_steps: int | None = None):
    """A jitted ``(state, x, y, keys, index) -> (state, metrics)``: one epoch of every replica, in one
    program. ``state`` is stacked (:func:`stack_replicas`), ``keys`` holds one epoch key per replica,
    ``index`` one ``(n,)`` row of example ids per replica (its training subset); ``x``, ``y`` are shared.
    Metrics come back with a leading replica axis."""
    body = epoch_body(step, batch_size, augment, max_steps)

    @jax.jit
    def epoch(state, x, y, keys, index):
        axes = replica_axes(state)
        return jax.vmap(body, in_axes=(axes, None, None, 0, 0), out_axes=(axes, 0))(state, x, y, keys, index)

    return epoch
