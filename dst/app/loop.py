"""The epoch loop of every run: R >= 1 replicas trained together, one record stream each.

A single run is R = 1; ``trainer.seeds`` stacks R replicas in one program (:mod:`dst.app.seeds`). Either
way one loop runs the epochs from where the run starts: IMP's level change, one compiled call per epoch,
a stop when an update outgrew a stored layer's capacity, a record per replica every
``log_every_epochs`` epochs (and after the last), a stop at a non-finite loss after logging it, a
checkpoint every ``checkpoint_every_epochs`` epochs (and after the last), and a stop after a checkpoint
once SIGTERM came (:class:`dst.app.resume.Preempted`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np

from dst.app.lottery import level_fields
from dst.app.lottery import segments
from dst.app.records import Interval
from dst.app.records import record_for
from dst.app.resume import Preempted
from dst.app.validate import ConfigError
from dst.logging import Progress
from dst.logging import RunLogger
from dst.train import stored


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclasses.dataclass
class Track:
    """What one replica logs: its logger, progress line, records so far and the interval since its last
    record; how it evaluates its state (``{split: {metric: value}}``), and where its state and its epoch
    metrics sit in the loop's (the identity for a single run, row ``r`` of the stacked replicas)."""

    logger: RunLogger
    progress: Progress
    records: list
    interval: Interval
    evaluate: Callable
    state_of: Callable = lambda state: state
    metrics_of: Callable = lambda metrics: metrics


def stop_on_overflow(storage, metrics) -> None:
    """:class:`ConfigError` (before the epoch is logged or saved) when an update grew a stored layer past
    its capacity (``sparsity.capacity``)."""
    if storage is not None and storage.stores:
        overflow = stored.capacity_overflow(metrics, storage.layout_of)
        if overflow is not None:
            raise ConfigError(overflow)


def non_finite(metrics, step: int, epoch: int, lr) -> str:
    """The sentence of a non-finite loss: its value, step and epoch (and replica, among several)."""
    loss = np.asarray(metrics["loss"])
    rows = loss.reshape(-1, loss.shape[-1])
    replica, at = divmod(int(np.argmin(np.isfinite(rows).reshape(-1))), rows.shape[1])
    which = f" of replica {replica}" if rows.shape[0] > 1 else ""
    return (f"train/loss became {rows[replica, at]} at step {step - rows.shape[1] + at} (epoch {epoch}){which}; "
            f"lower optimizer.lr (now {lr}) or check the data.")


def train_epochs(plan, storage, pairs, state, start_epoch: int, tracks: list[Track], *, epoch_fn: Callable,
                 level_change: Callable, save: Callable, stopping: Callable, clock: float):
    """The epochs of ``plan`` from ``start_epoch`` on ``state`` (a replica's, or the stacked ones'):
    ``epoch_fn(state, epoch, steps) -> (state, metrics)``, ``level_change(state, level) -> state`` (IMP),
    ``save(epoch, state, elapsed)``; ``clock`` is when the run started, its earlier sessions included
    (``time.perf_counter`` scale). Returns the final state."""
    trainer = plan.cfg["trainer"]
    every = trainer.get("checkpoint_every_epochs") or 0
    for segment in segments(plan)[start_epoch:]:
        epoch = segment.epoch
        if segment.level and segment.level_epoch == 1:
            state = level_change(state, segment.level)
        t0 = time.perf_counter()
        state, metrics = epoch_fn(state, epoch, segment.steps)
        metrics = jax.device_get(metrics)
        stop_on_overflow(storage, metrics)
        seconds = time.perf_counter() - t0
        finite = bool(np.all(np.isfinite(metrics["loss"])))
        log = not (segment.level_epoch % trainer["log_every_epochs"] and not segment.last and finite)
        for track in tracks:
            mine = track.state_of(state)
            view, counts = stored.record_view(storage, mine)   # what records read: dense masks, or unit counts
            track.interval.add(track.metrics_of(metrics), seconds, view, counts)
            if not log:
                continue
            record = record_for(epoch, view, track.interval, track.evaluate(mine), pairs, time.perf_counter() - clock,
                                counts)
            if plan.algo.levels:
                record.update({"level_step": record["step"], **level_fields(segment, track.interval)})
            track.logger.log(record)
            track.records.append(record)
            track.progress.update(epoch, record)
            track.interval = track.interval.next()
        if not finite:
            raise NonFiniteLossError(non_finite(metrics, int(state.step), epoch, plan.cfg["optimizer"]["lr"]))
        if every and (epoch % every == 0 or epoch == plan.epochs) or stopping():
            save(epoch, state, time.perf_counter() - clock)
        if stopping() and epoch < plan.epochs:
            raise Preempted(f"stopped by SIGTERM after epoch {epoch} (step {int(state.step)}); the same command "
                            f"resumes from the checkpoint.")
    return state
