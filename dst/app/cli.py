"""``dst-train``: the Hydra entry point over ``conf/``.

A bad setting prints one sentence (``error: <field> must be ...``) on stderr and exits with status 2,
before anything is compiled or written beyond Hydra's own ``.hydra/`` folder. SIGTERM stops a run after
a checkpoint with status 143 (the same command resumes it).

In a sweep (``-m``, ``+sweep=...``) a job that fails does not stop the others: its run directory
records ``status: failed`` and the error in ``summary.json``, and the sweep's report lists it.

The return value is the sweep objective (Optuna): validation accuracy when the data set has a
validation split, else test accuracy; the run says which (with ``trainer.seeds``, the mean over seeds).
"""

from __future__ import annotations

import json
import pathlib
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf import OmegaConf

from dst.app import grids  # noqa: F401  (registers hydra/sweeper=grids before Hydra composes)
from dst.app.validate import ConfigError

CONFIG_DIR = str(pathlib.Path(__file__).resolve().parents[2] / "conf")
EXIT_BAD_CONFIG = 2
EXIT_PREEMPTED = 143     # 128 + SIGTERM, as a process killed by it


def objective(summary: dict) -> tuple[str, float]:
    """``(name, value)``: ``val/accuracy`` when the run has a validation split, else ``test/accuracy``."""
    key = "val/accuracy" if "val/accuracy" in summary else "test/accuracy"
    return key, float(summary.get(key, float("nan")))


def _record_failure(run_dir, err: BaseException) -> None:
    """A sweep job that failed before its run wrote anything still leaves a summary saying so."""
    path = pathlib.Path(run_dir) / "summary.json"
    if not path.exists():
        path.write_text(json.dumps({"status": "failed", "error": str(err), "run_dir": str(run_dir)}, indent=2) + "\n")


def _train(cfg: DictConfig):
    from dst.app.resume import Preempted  # after Hydra has parsed the command line: --help stays fast
    from dst.app.run import run

    plain = OmegaConf.to_container(cfg, resolve=True)
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if in_sweep and plain.get("logger", {}).get("group") is None:
        plain["logger"]["group"] = str(hydra_cfg.sweep.dir)   # the runs of one sweep share a wandb group
    try:
        if plain["trainer"].get("seeds") is not None:
            from dst.app.seeds import run_seeds

            summaries = run_seeds(plain, run_dir)
            values = [objective(s)[1] for s in summaries]
            summary = {**summaries[0], objective(summaries[0])[0]: sum(values) / len(values)}
        else:
            summary = run(plain, run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        if in_sweep:
            _record_failure(run_dir, err)
            return float("nan")
        sys.exit(EXIT_BAD_CONFIG)
    except Preempted as err:
        print(f"preempted: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_PREEMPTED)
    except Exception as err:
        if not in_sweep:
            raise
        print(f"error: job {hydra_cfg.job.num} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        _record_failure(run_dir, err)
        return float("nan")
    name, value = objective(summary)
    print(f"objective: {name} = {value:.4f}", flush=True)
    return value


main = hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")(_train)

if __name__ == "__main__":
    main()
