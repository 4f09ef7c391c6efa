"""The epochs of a run, and the levels of an iterative one (IMP: ``algo.levels > 0``).

A run is a list of :class:`Segment`\\ s, one compiled epoch call each. A plain run's segments are its
epochs. An iterative run repeats the schedule once per level: level 0 from step 0, every later level
from ``algo.rewind_step`` (its first segment ends where the epoch of that step ends), each to the run's
``T`` steps. Segments are numbered across levels, so checkpoints, resume and progress work as in a
plain run; between two levels :func:`next_level_state` prunes, rewinds and restarts the optimizer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

import dst
from dst.app.build import make_tx
from dst.train import stored
from dst.train.state import TrainState
from dst.train.state import counts

# fold_in tags of a level's keys: its pruning, its fresh initialisation (control random_reinit).
LEVEL_STREAM, REINIT_STREAM = 0x1E7E1, 0x2E1A1


class Segment(NamedTuple):
    epoch: int          # 1.. across the whole run (checkpoints, progress, data keys)
    level: int          # 0 in a plain run
    level_epoch: int    # 1.. within the level
    steps: int          # steps in this compiled call
    last: bool          # the level's (or plain run's) last segment
    steps_done: int     # optimizer steps taken in the run once this segment is done, over all levels


def segments(plan) -> list[Segment]:
    """The run's segments (see the module docstring)."""
    total, per_epoch = plan.total_steps, plan.steps_per_epoch
    out, done = [], 0
    for level in range(plan.algo.levels + 1):
        step, level_epoch = (0 if level == 0 else plan.algo.rewind_step), 0
        while step < total:
            steps = min(per_epoch - step % per_epoch, total - step)
            step, level_epoch, done = step + steps, level_epoch + 1, done + steps
            out.append(Segment(len(out) + 1, level, level_epoch, steps, step == total, done))
    return out


def _restart_count(opt_state, step: int):
    """A fresh optimizer state whose step counters (optax's ``count`` fields) read ``step``, so the
    learning-rate schedule goes on from there."""
    def reset(path, leaf):
        last = path[-1] if path else None
        named_count = getattr(last, "name", None) == "count"
        return jnp.full_like(leaf, step) if named_count else leaf

    return jax.tree_util.tree_map_with_path(reset, opt_state)


def next_level_state(plan, run, state, level: int):
    """The train state that starts ``level``: ``algo.next_level``'s masks and start weights (rewound,
    or a fresh initialisation under ``control=random_reinit``), a new optimizer at the rewind step, the
    model state of the initialisation when rewinding to step 0, and ITOP bookkeeping carried over."""
    cfg, algo = plan.cfg, plan.algo
    key = jax.random.fold_in(jax.random.key(cfg["trainer"]["seed"]), LEVEL_STREAM + level)
    sample = jnp.zeros((1,) + tuple(plan.data.example_shape), jnp.float32)
    fresh_init = lambda: dst.init_model(plan.model, jax.random.fold_in(key, REINIT_STREAM), sample)[0]
    view = stored.dense_view(run.storage, state)    # a stored run's levels prune its dense view
    params, masks, algo_state = algo.next_level(state.algo_state, key, view.params, view.masks, fresh_init)
    ever_active = None if state.ever_active is None else \
        jax.tree_util.tree_map(jnp.logical_or, state.ever_active, masks)
    topologies, live = None, masks
    if state.topologies is not None:                # stored again, in the same capacity: the freed slots pad
        algo_state = algo_state._replace(grown=stored.at_slots(run.storage, algo_state.grown, masks))
        params, live, topologies = stored.compress_state(run.storage, params, masks)
    tx = make_tx(cfg, plan.total_steps, say=lambda *_: None)
    # Built op by op rather than by create_train_state's jit: a new program per level would cost seconds.
    new = TrainState(params=params, live=live,
                     model_state=run.state.model_state if algo.rewind_step == 0 else state.model_state,
                     opt_state=_restart_count(tx.init(params), algo.rewind_step), algo_state=algo_state,
                     ever_active=ever_active, active=counts(live), step=jnp.asarray(algo.rewind_step, jnp.int32),
                     rng=state.rng, topologies=topologies)
    return new if plan.parallel is None else plan.parallel.replicate(new)


def level_fields(segment, interval) -> dict:
    """What a record of an iterative run adds: its ``level``, the epoch within it, and the run's step
    counted over all levels (``step`` stays monotonic; ``level_step`` is the level's own clock)."""
    return {"level": segment.level, "level_epoch": segment.level_epoch, "step": segment.steps_done,
            "flops/train_relative": interval.cumulative_flops / (segment.steps_done * 3.0 * interval.f_dense)}
