"""``dst-train``: the Hydra entry point over ``conf/``.

A bad setting prints one sentence (``error: <field> must be ...``) on stderr and exits with status 2,
before anything is compiled or written beyond Hydra's own ``.hydra/`` folder. SIGTERM stops a run after
a checkpoint with status 143 (the same command resumes it).

In a sweep (``-m``, ``+sweep=...``) a job that fails does not stop the others: its run directory
records ``status: failed`` and the error in ``summary.json``, and the sweep's report lists it.

The return value is the sweep objective (Optuna): validation accuracy when the data set has a
validation split, else test accuracy; the run says which (with ``trainer.seeds``, the mean over seeds).

Several processes (one per host or per GPU): when Slurm's ``srun`` starts more than one task, when
``DST_NUM_PROCESSES`` > 1 (with ``DST_COORDINATOR``, ``DST_PROCESS_ID``), or with ``trainer.distributed=on``
and ``trainer.coordinator``, ``trainer.num_processes``, ``trainer.process_id``, ``dst-train`` joins the
others through ``jax.distributed`` before anything uses JAX (:class:`JoinProcesses`, a Hydra callback
that runs before Hydra makes the run directory); every process then uses process 0's run directory and
only process 0 writes in it. A coordinator that does not answer within ``trainer.join_timeout``
seconds, and a peer that dies, end the process with one sentence on stderr and status 1.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf import OmegaConf
from omegaconf import open_dict
from omegaconf import read_write

from dst.app import grids  # noqa: F401  (registers hydra/sweeper=grids before Hydra composes)
from dst.app.validate import ConfigError

CONFIG_DIR = str(pathlib.Path(__file__).resolve().parents[2] / "conf")
EXIT_FAILED = 1
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


def join(trainer: dict):
    """Join the other processes when this is one of several (:mod:`dst.train.distributed`); returns the
    setup, or None for a process that runs alone. A bad setting, or a coordinator that does not
    answer, is one sentence and an exit."""
    from dst.train import distributed
    from dst.train import stderr_guard

    try:
        setup = distributed.detect(trainer)
    except distributed.DistributedError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_CONFIG)
    if setup is None or distributed.current() is not None:
        return distributed.current() if setup is not None else None
    # jaxlib ends the process with a C++ log when the coordinator does not answer or a peer dies: the
    # guard says one sentence instead.
    stderr_guard.install(distributed.join_failure(setup), distributed.gone_message(setup))
    try:
        distributed.join(setup)
    except distributed.JoinError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_FAILED)
    stderr_guard.joined()
    import jax

    print(f"jax.distributed: process {setup.process_id} of {setup.num_processes} ({setup.source}; coordinator "
          f"{setup.coordinator}), {jax.local_device_count()} of {jax.device_count()} devices here", flush=True)
    return setup


class JoinProcesses(Callback):
    """Before Hydra makes the run directory (conf/config.yaml's ``hydra.callbacks``): join the other
    processes when this is one of several; every process then takes process 0's run (or sweep)
    directory, and the others leave out Hydra's ``.hydra/`` folder, so that process 0 alone writes."""

    def on_run_start(self, config, **kwargs) -> None:
        _share_directory(config, "run")

    def on_multirun_start(self, config, **kwargs) -> None:
        _share_directory(config, "sweep")


def _share_directory(config, key: str) -> None:
    if join(OmegaConf.to_container(config.trainer, resolve=True)) is None:
        return
    from dst.train import distributed

    here = os.path.abspath(str(config.hydra[key].dir))
    if distributed.is_primary():      # made before the others learn its name: they never make it
        pathlib.Path(here).mkdir(parents=True, exist_ok=True)
    with read_write(config), open_dict(config):
        config.hydra[key].dir = distributed.broadcast_text(here)
        if not distributed.is_primary():
            config.hydra.output_subdir = None


def _train(cfg: DictConfig):
    from dst.app.resume import Preempted  # after Hydra has parsed the command line: --help stays fast
    from dst.app.run import run

    plain = OmegaConf.to_container(cfg, resolve=True)
    setup = join(plain["trainer"])     # already done by JoinProcesses, unless the callback was left out
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if in_sweep and plain.get("logger", {}).get("group") is None:
        plain["logger"]["group"] = str(hydra_cfg.sweep.dir)   # the runs of one sweep share a wandb group
    try:
        if setup is not None and plain["trainer"].get("seeds") is not None:
            raise ConfigError("trainer.seeds must be null in a run of several processes; run one seed per "
                              "run, e.g. trainer.seed=1.")
        if plain["trainer"].get("seeds") is not None:
            from dst.app.seeds import run_seeds

            summaries = run_seeds(plain, run_dir)
            values = [objective(s)[1] for s in summaries]
            summary = {**summaries[0], objective(summaries[0])[0]: sum(values) / len(values)}
        else:
            summary = run(plain, run_dir)
    except ConfigError as err:
        if setup is not None and not in_sweep:
            # Not sys.exit: its shutdown barrier would wait for peers that never reach it (one process of
            # several can refuse a setting the others accepted, e.g. a data folder missing on its host).
            from dst.train import distributed

            distributed.exit_now(f"error: {err}", EXIT_BAD_CONFIG)
        print(f"error: {err}", file=sys.stderr, flush=True)
        if in_sweep:
            _record_failure(run_dir, err)
            return float("nan")
        sys.exit(EXIT_BAD_CONFIG)
    except Preempted as err:
        print(f"preempted: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_PREEMPTED)
    except Exception as err:
        if setup is not None and not in_sweep:
            _leave(setup, err)
        if not in_sweep:
            raise
        print(f"error: job {hydra_cfg.job.num} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        _record_failure(run_dir, err)
        return float("nan")
    name, value = objective(summary)
    print(f"objective: {name} = {value:.4f}", flush=True)
    return value


def _leave(setup, err: BaseException) -> None:
    """End a process of several at once after a failure (no shutdown barrier with peers that may be
    gone; theirs fail at once in turn), with one sentence; a bug also prints its traceback."""
    from dst.train import distributed

    if distributed.is_lost_peer(err):
        distributed.exit_now(distributed.lost_peer_message(setup, err), EXIT_FAILED)
    traceback.print_exc()
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    distributed.exit_now(f"error: process {setup.process_id} of {setup.num_processes} failed: "
                         f"{type(err).__name__}: {first}", EXIT_FAILED)


main = hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")(_train)

if __name__ == "__main__":
    main()
