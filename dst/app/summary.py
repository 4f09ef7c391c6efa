"""How a run ends: its outcome, its ``summary.json`` (last record, best accuracy, backend and stored
layers, each IMP level), its plot and its closed logger; the same for a single run and for each replica
of ``trainer.seeds``."""

from __future__ import annotations

import json
import pathlib

from dst.app.resume import Preempted
from dst.plotting import plot_curves
from dst.train import auto


def density_table(records: list[dict], layers: list[str]) -> tuple[list[str], list[list]]:
    """``(columns, rows)``: each sparsifiable layer's final density, from the last record."""
    last = records[-1]
    return ["layer", "density"], [[n, 1.0 - last[f"sparsity/{n}"]] for n in layers]


def run_tags(cfg: dict) -> list[str]:
    """wandb tags that let runs be filtered by what they are."""
    sp = cfg["sparsity"]
    model = cfg["model"].get("name") or cfg["model"].get("_target_")
    return [f"algorithm={sp['algorithm']}", f"sparsity={sp['sparsity']}", f"distribution={sp['distribution']}",
            f"model={model}", f"dataset={cfg['dataset']['name']}", f"seed={cfg['trainer']['seed']}"]


class Outcome:
    """How a run ended, for its summary: ``finished``, ``preempted`` (SIGTERM) or ``failed`` with the
    error; as a context manager it records the exception leaving the block and lets it propagate."""

    def __init__(self):
        self.status, self.error = "finished", None

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if isinstance(err, Preempted):
            self.status = "preempted"
        elif err is not None:
            self.status, self.error = "failed", f"{kind.__name__}: {err}"
        return False


def finish_run(records: list[dict], run_dir, cfg: dict, logger, parts, outcome: Outcome, wall: float,
               **extra) -> dict:
    """The summary of a run (its last record, best test accuracy, how it ended, ``extra``), its plot, and
    the wandb run closed; the same for a single run and each replica of ``trainer.seeds``."""
    run_dir = pathlib.Path(run_dir)
    summary = dict(records[-1]) if records else {}
    summary.update({"status": outcome.status,
                    "best/test_accuracy": max((r["test/accuracy"] for r in records), default=float("nan")),
                    "total_steps": records[-1]["step"] if records else 0, "wall_time": wall,
                    "run_dir": str(run_dir), "initial_densities": json.dumps(parts.densities), **extra})
    if parts.undivided:
        summary["dense_by_structure"] = json.dumps(parts.undivided)
    storage = getattr(parts, "storage", None)
    summary["backend"] = cfg["sparsity"].get("backend") or "masked"
    if getattr(parts, "auto", None):   # sparsity.backend=auto: both times and the choice, per layer
        chosen = auto.stored_layers(parts.auto)
        summary["auto_backend"] = json.dumps({n: {**t._asdict(), "saving_s": t.saving_s,
                                                  "backend": "csr" if n in chosen else "masked"}
                                              for n, t in parts.auto.items()})
    if storage is not None and storage.layout_of:   # each stored layer's capacity: weights (csr), fan-in (condensed)
        summary["stored_layers"] = json.dumps({n: lay.count for n, lay in storage.layout_of.items()})
    summary.update(level_summary(records))
    if outcome.error:
        summary["error"] = outcome.error
    if records and getattr(logger, "write", True):     # process 0 of several writes the files
        plot_curves(records, run_dir / "curves.png", title=cfg.get("name", ""))
    logger.finish(summary, exit_code=0 if outcome.status == "finished" else 1,
                  tables={"final/densities": density_table(records, parts.layers)} if records else None)
    return summary


def level_summary(records: list[dict]) -> dict:
    """Per level of an iterative run (IMP): its density and its final and best test accuracy, as
    ``level/<L>/density``, ``level/<L>/test_accuracy``, ``level/<L>/best_test_accuracy``."""
    out = {}
    for level in sorted({r["level"] for r in records if "level" in r}):
        mine = [r for r in records if r.get("level") == level]
        out[f"level/{level}/density"] = 1.0 - mine[-1]["sparsity/global"]
        out[f"level/{level}/test_accuracy"] = mine[-1]["test/accuracy"]
        out[f"level/{level}/best_test_accuracy"] = max(r["test/accuracy"] for r in mine)
    return out
