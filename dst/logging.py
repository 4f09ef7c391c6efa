"""Run outputs: ``metrics.jsonl``, ``summary.json``, an offline wandb run and console progress.

Every record goes to ``metrics.jsonl`` first (flushed per line), so a crash or a non-finite loss keeps
everything logged so far. wandb is offline by default: a complete run is written under
``<run dir>/wandb`` with no network and no account (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time

import numpy as np

WANDB_MODES = ("offline", "online", "disabled")


def _plain(value):
    """JSON-safe scalars (numpy/jax scalars become floats or ints)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Writes each record to ``metrics.jsonl`` (and wandb), and the final one to ``summary.json``.

    ``write=False`` (the other processes of a multi-process run: process 0 writes) writes nothing."""

    def __init__(self, run_dir, config: dict | None = None, *, use_wandb: bool = True,
                 wandb_mode: str = "offline", project: str = "dst", name: str | None = None,
                 group: str | None = None, tags=(), run_id: str | None = None, write: bool = True):
        self.run_dir = pathlib.Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.write = write
        self._metrics = None
        if write:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._metrics = self.metrics_path.open("a")
        self.wandb_run = None
        if write and use_wandb and wandb_mode != "disabled":
            import wandb  # imported here: runs with logger=none never pay for it

            os.environ.setdefault("WANDB_SILENT", "true")
            # A resumed run continues its wandb run (same id) rather than starting a second one.
            self.wandb_run = wandb.init(project=project, name=name, group=group, tags=list(tags),
                                        dir=str(self.run_dir), mode=wandb_mode, config=config or {},
                                        id=run_id, resume="allow" if run_id else None,
                                        reinit="create_new")   # replicas: several live runs in one process
        self.run_id = None if self.wandb_run is None else self.wandb_run.id

    def log(self, record: dict) -> None:
        if not self.write:
            return
        record = {k: _plain(v) for k, v in record.items()}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=int(record["step"]))

    def finish(self, summary: dict, exit_code: int = 0, tables: dict | None = None) -> None:
        """Write ``summary.json`` and close the wandb run; ``tables`` (``{key: (columns, rows)}``) are
        logged to wandb as tables (e.g. the final per-layer densities)."""
        if not self.write:
            return
        summary = {k: _plain(v) for k, v in summary.items()}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self._metrics.close()
        if self.wandb_run is not None:
            import wandb

            for key, (columns, rows) in (tables or {}).items():
                self.wandb_run.log({key: wandb.Table(columns=columns, data=rows)})
            for key, value in summary.items():
                self.wandb_run.summary[key] = value
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None

    @property
    def wandb_dir(self) -> str | None:
        return None if self.wandb_run is None else str(pathlib.Path(self.wandb_run.dir).parent)


class StepProgress:
    """Within a long epoch, one console line every ``every`` steps: the steps done, their mean loss, the
    time per step since the last line and what the epoch has left (``trainer.progress_every_steps``)."""

    def __init__(self, every: int, stream=None):
        self.every, self.stream = every, stream or sys.stdout
        self.losses, self.last = [], None

    def __call__(self, done: int, steps: int, loss: float) -> None:
        self.losses.append(loss)
        if done % self.every and done != steps:
            return
        now = time.perf_counter()
        rate = ""
        if self.last is not None and self.last[1] < done:     # not the epoch's first line
            per_step = (now - self.last[0]) / (done - self.last[1])
            rate = f", {per_step:.2f} s/step lately, epoch eta {per_step * (steps - done) / 60:.1f} min"
        print(f"  step {done}/{steps}: loss {np.mean(self.losses):.4f}{rate}", file=self.stream, flush=True)
        self.losses, self.last = [], None if done == steps else (now, done)   # the next epoch starts afresh


class Progress:
    """One console line per logged interval: a bar over the run, then the numbers that matter."""

    def __init__(self, total_epochs: int, stream=None, width: int = 20, prefix: str = ""):
        self.total = total_epochs
        self.prefix = prefix
        self.stream = stream or sys.stdout
        self.width = width
        self.start = time.perf_counter()

    def update(self, epoch: int, record: dict) -> None:
        done = int(self.width * epoch / self.total)
        bar = "#" * done + "." * (self.width - done)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / epoch * (self.total - epoch) if epoch else 0.0
        line = (f"{self.prefix}epoch {epoch:>{len(str(self.total))}}/{self.total} [{bar}] "
                f"loss {record['train/loss']:.4f} acc {record['train/accuracy']:.4f} "
                f"test {record['test/accuracy']:.4f} density {1 - record['sparsity/global']:.4f} "
                + (f"itop {record['itop_rate']:.3f} " if "itop_rate" in record else "")
                + f"{record['steps_per_sec']:.{0 if record['steps_per_sec'] >= 10 else 2}f} steps/s "
                f"elapsed {elapsed:.0f}s eta {eta:.0f}s")
        print(line, file=self.stream, flush=True)
