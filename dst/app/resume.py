"""Where a run starts: fresh, or from its latest checkpoint; and stopping cleanly on SIGTERM.

A run resumes when its directory holds a checkpoint (the same command with the same
``hydra.run.dir``); ``trainer.resume=false`` starts over instead, and only then are the old
checkpoints and records removed. A checkpoint written with other settings, or one that cannot be read,
stops the run in one sentence and is left as it is.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import signal
import threading
from typing import Any
from typing import NamedTuple

from dst.app.records import Interval
from dst.app.validate import ConfigError
from dst.train import distributed
from dst.train.checkpoint import CheckpointError
from dst.train.checkpoint import RunCheckpoints


class Preempted(RuntimeError):
    """The run received SIGTERM (a Slurm preemption, a ``kill``) and stopped after a checkpoint."""


class Start(NamedTuple):
    """The point the epoch loop starts from."""

    epoch: int                 # the last epoch already trained (0: a fresh run)
    state: Any
    data_key: Any
    interval: Interval
    records: list
    elapsed: float             # wall-clock seconds of training before this start (the run's clock)
    wandb_id: str | None = None


def fingerprint(cfg: dict) -> dict:
    """The settings a checkpoint's arrays depend on: restoring into other ones is refused."""
    sp = cfg["sparsity"]
    return {"model": json.dumps(cfg["model"], sort_keys=True), "dataset.name": cfg["dataset"]["name"],
            "sparsity.algorithm": sp["algorithm"], "sparsity.sparsity": sp["sparsity"],
            "sparsity.distribution": sp["distribution"], "trainer.seeds": cfg["trainer"].get("seeds"),
            "sparsity.backend": sp.get("backend") or "masked",   # a stored state is not a masked one
            # The stored layers' slots; only when set, so that checkpoints from before the setting still resume.
            **({"sparsity.capacity": sp["capacity"]} if sp.get("capacity") is not None else {})}


def restore_latest(cfg: dict, checkpoints: RunCheckpoints, state, data_key, say, also_remove=(), detail=None):
    """``(state, data key, meta)`` of the latest checkpoint, restored into the structure of ``state``, or
    None when there is none, or when ``trainer.resume=false`` (which removes the checkpoints and the files
    ``also_remove``). A checkpoint of another run's settings is one :class:`ConfigError` sentence.
    ``detail(meta)``: more words for the line that says where the run resumes."""
    latest = checkpoints.latest()
    if latest is not None and not cfg["trainer"].get("resume", True):
        say(f"trainer.resume=false: starting over; removing {checkpoints.directory}"
            + "".join(f" and {p.name}" for p in also_remove))
        checkpoints.close()
        if distributed.is_primary():
            shutil.rmtree(checkpoints.directory)
            for path in also_remove:
                path.unlink(missing_ok=True)
        return None
    if latest is None:
        return None
    try:
        state, data_key, meta = checkpoints.restore(latest, state, data_key, fingerprint(cfg))
    except CheckpointError as err:
        raise ConfigError(str(err)) from None
    say(f"resuming from {checkpoints.path(latest)}: epoch {meta['epoch']}, step {meta['step']}"
        + (detail(meta) if detail else ""))
    return state, data_key, meta


def start_point(cfg: dict, run_dir: pathlib.Path, checkpoints: RunCheckpoints, fresh: Start, say) -> Start:
    """``fresh``, or the latest checkpoint's state; rewrites ``metrics.jsonl`` to the records it holds.
    With several processes, process 0 reads and writes, and every process starts from what it read."""
    metrics = run_dir / "metrics.jsonl"
    primary = distributed.is_primary()
    restored = restore_latest(cfg, checkpoints, fresh.state, fresh.data_key, say, also_remove=(metrics,),
                              detail=lambda meta: f", {len(meta['records'])} records")
    if restored is None:
        if primary:
            metrics.unlink(missing_ok=True)   # records of an attempt that never checkpointed: it starts over
        return fresh
    state, data_key, meta = restored
    records = meta["records"]
    if primary:
        metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    return Start(epoch=meta["epoch"], state=state, data_key=data_key,
                 interval=fresh.interval.restored(meta["interval"]), records=records,
                 elapsed=meta["elapsed"], wandb_id=meta.get("wandb_id"))


def checkpoint_meta(cfg: dict, epoch: int, step: int, interval: Interval, records: list, elapsed: float,
                    wandb_id: str | None) -> dict:
    return {"epoch": epoch, "step": step, "interval": interval.to_json(), "records": records,
            "elapsed": elapsed, "wandb_id": wandb_id, "fingerprint": fingerprint(cfg)}


@contextlib.contextmanager
def stop_on_sigterm():
    """Yields ``stopping() -> bool``: True once SIGTERM arrived (the loop then checkpoints and stops).

    The handler only sets a flag: a signal that arrives during a compiled epoch is acted on when it
    returns. Outside the main thread (where handlers cannot be set) ``stopping`` is always False.
    """
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.set())
    try:
        yield received.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)
