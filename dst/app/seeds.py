"""``trainer.seeds=[0,1,2,3]``: one replica per seed, all trained in ONE compiled program (``jax.vmap``
over a replica axis, :mod:`dst.train.replicas`), each written to its own complete run directory
``<run dir>/seed_<s>/`` that ``dst-report`` reads as a separate run.

Replica ``s`` is the run ``trainer.seed=s`` would make: its own init, masks, mask updates, data order
and validation split (the same rows of the shared training files), within float tolerance of the
single run. The schedule is shared and unbatched, so mask updates still run only at their steps.
Checkpoints hold the stacked state in ``<run dir>/checkpoints/``; the same command resumes all replicas.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from dst.app.build import augment_options
from dst.app.build import loader_options
from dst.app.loop import Track
from dst.app.loop import train_epochs
from dst.app.lottery import next_level_state
from dst.app.lottery import segments
from dst.app.records import Interval
from dst.app.resume import fingerprint
from dst.app.resume import restore_latest
from dst.app.resume import stop_on_sigterm
from dst.app.run import initialise
from dst.app.run import prepare
from dst.app.summary import Outcome
from dst.app.summary import finish_run
from dst.app.summary import run_tags
from dst.app.validate import ConfigError
from dst.app.validate import validate
from dst.data import load
from dst.data.augment import make_augment
from dst.data.datasets import split_indices
from dst.logging import Progress
from dst.logging import RunLogger
from dst.train import stored
from dst.train.checkpoint import RunCheckpoints
from dst.train.epoch import HostLoopEpoch
from dst.train.replicas import replicated_epoch_fn
from dst.train.replicas import stack_replicas
from dst.train.replicas import unstack_replica


class Replica(NamedTuple):
    seed: int
    cfg: dict
    run_dir: pathlib.Path
    val: tuple | None          # (x, y) of its validation split on the device, or None
    densities: dict            # its initial layer densities (one-shot pruning is per seed)
    logger: RunLogger
    progress: Progress
    records: list


def check_seeds(seeds) -> list[int]:
    ok = isinstance(seeds, list | tuple) and len(seeds) > 0 and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise ConfigError(f"trainer.seeds must be a non-empty list of distinct non-negative integers; got {seeds!r}.")
    return list(seeds)


def with_seed(cfg: dict, seed: int) -> dict:
    out = copy.deepcopy(cfg)
    out["trainer"]["seed"], out["trainer"]["seeds"] = seed, None
    # The default name ends in the (single) seed it was composed with: replace it with this one.
    name, found = re.subn(r"_(s|seed)\d+$", lambda m: f"_{m.group(1)}{seed}", str(cfg.get("name", "run")))
    out["name"] = name if found else f"{name}_s{seed}"
    return out


def run_seeds(cfg: dict, run_dir, *, stream=None) -> list[dict]:
    """Train one replica per ``trainer.seeds`` entry in one program; returns their summaries."""
    seeds = check_seeds(cfg["trainer"]["seeds"])
    validate(cfg)      # with the seeds in: some settings (a streamed data set) cannot take them
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    say = lambda msg: print(msg, file=stream or sys.stdout, flush=True)
    configs = [with_seed(cfg, s) for s in seeds]
    plan = prepare(configs[0], say)
    ds = cfg["dataset"]
    files = load(ds["name"], ds.get("data_dir"), val_fraction=0.0, seed=None, normalize=ds["normalize"],
                 **loader_options(ds))
    index, vals, parts = [], [], []
    for s, cfg_s in zip(seeds, configs):
        train_idx, val_idx = split_indices(files.train_x.shape[0], ds["val_fraction"], s)
        data = files._replace(train_x=files.train_x[train_idx], train_y=files.train_y[train_idx],
                              val_x=files.train_x[val_idx], val_y=files.train_y[val_idx])
        parts.append(initialise(plan._replace(cfg=cfg_s, data=data)))
        index.append(train_idx)
        vals.append((jnp.asarray(data.val_x), jnp.asarray(data.val_y)) if len(val_idx) else None)
    check_same_storage(seeds, parts)
    stacked = stack_replicas([p.state for p in parts])
    data_keys = [jax.random.split(jax.random.key(s), 4)[3] for s in seeds]

    checkpoints = RunCheckpoints(run_dir / "checkpoints", keep=cfg["trainer"].get("keep_checkpoints", 2))
    start_epoch, elapsed, saved = 0, 0.0, {}
    restored = restore_latest(cfg, checkpoints, stacked, data_keys[0], say)
    if restored is not None:
        stacked, _, meta = restored
        start_epoch, elapsed, saved = meta["epoch"], meta["elapsed"], meta["replicas"]

    replicas, intervals = [], []
    for s, cfg_s, val, part in zip(seeds, configs, vals, parts):
        d = run_dir / f"seed_{s}"
        (d / ".hydra").mkdir(parents=True, exist_ok=True)
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg_s, sort_keys=False))
        mine = saved.get(str(s), {"records": [], "interval": None, "wandb_id": None})
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mine["records"]))
        lg = cfg["logger"]
        logger = RunLogger(d, cfg_s, use_wandb=lg["name"] == "wandb", wandb_mode=lg.get("mode", "disabled"),
                           project=lg.get("project", "dst"), name=cfg_s["name"], group=lg.get("group"),
                           tags=[*lg.get("tags", ()), *run_tags(cfg_s)], run_id=mine["wandb_id"])
        replicas.append(Replica(s, cfg_s, d, val, part.densities, logger,
                                Progress(plan.epochs, stream=stream, prefix=f"seed {s}: "), mine["records"]))
        fresh = Interval(part.flops, part.layers, plan.algo)
        intervals.append(fresh if mine["interval"] is None else fresh.restored(mine["interval"]))
    say(f"dst: {len(seeds)} replicas (seeds {seeds}) in one program -> {run_dir}/seed_<s>/")

    outcome, t_start = Outcome(), time.perf_counter() - elapsed
    try:
        with outcome, stop_on_sigterm() as stopping:
            _train(cfg, plan, parts, files, stacked, index, data_keys, replicas, intervals, start_epoch,
                   t_start, checkpoints, stopping, say)
    finally:
        checkpoints.close()
        wall = time.perf_counter() - t_start
        summaries = [finish_run(r.records, r.run_dir, r.cfg, r.logger, part, outcome, wall, replicas=True)
                     for r, part in zip(replicas, parts)]
    return summaries


def check_same_storage(seeds, parts) -> None:
    """Replicas run in one program, so their stored layers need the same capacities (a one-shot pruning
    from data, SNIP's or GraSP's, can give each seed its own count per layer)."""
    first = parts[0].storage.layout_of if parts[0].storage is not None else {}
    for s, part in zip(seeds[1:], parts[1:]):
        mine = part.storage.layout_of if part.storage is not None else {}
        for name in first:
            if mine.get(name) != first[name]:
                theirs = "none" if name not in mine else f"{mine[name].count:,}"
                raise ConfigError(f"trainer.seeds runs its replicas in one program, so each stored layer needs one "
                                  f"capacity, and {name} holds {first[name].count:,} weights for seed {seeds[0]} "
                                  f"but {theirs} for seed {s}; use sparsity.backend=masked, or one seed per run.")


def _train(top_cfg, plan, all_parts, files, stacked, index, data_keys, replicas, intervals, start_epoch, t_start,
           checkpoints, stopping, say):
    """The epochs of the stacked replicas (:func:`dst.app.loop.train_epochs`), each logged to its own directory."""
    cfg, trainer = plan.cfg, plan.cfg["trainer"]
    parts = all_parts[0]
    if start_epoch >= plan.epochs:
        say(f"the run already finished its {plan.epochs} epochs; nothing left to train")
        return
    x, y = jnp.asarray(files.train_x), jnp.asarray(files.train_y)
    test = (jnp.asarray(files.test_x), jnp.asarray(files.test_y))
    index = jnp.asarray(np.stack(index))
    keys = lambda epoch: jnp.stack([jax.random.fold_in(k, epoch) for k in data_keys])
    augment = make_augment(cfg["dataset"].get("augment", "none"), **augment_options(cfg["dataset"], files))
    lengths = {s.steps for s in segments(plan)}
    if any(isinstance(fn, HostLoopEpoch) for fn in parts.epoch_fns.values()):
        say("note: replicas of a conv net run inside one lax.scan, which XLA on CPU runs far slower than one "
            "dispatch per step (jax#12868); on CPU separate runs may be faster.")
    t0 = time.perf_counter()
    compiled = {n: replicated_epoch_fn(parts.step, trainer["batch_size"], augment,
                                       None if n == plan.steps_per_epoch else n).lower(
        stacked, x, y, keys(1), index).compile() for n in lengths}
    say(f"compiled the replicated train epoch in {time.perf_counter() - t0:.1f}s")
    tracks = []
    for r, rep in enumerate(replicas):
        splits = {"test": test, **({"val": rep.val} if rep.val is not None else {})}

        def evaluate(state, splits=splits):
            return {k: parts.evaluate(stored.model_params(state), state.model_state, *xy) for k, xy in splits.items()}

        tracks.append(Track(rep.logger, rep.progress, rep.records, intervals[r], evaluate,
                            state_of=lambda stacked, r=r: unstack_replica(stacked, r),
                            metrics_of=lambda m, r=r: jax.tree_util.tree_map(lambda a: a[r], m)))

    def level_change(stacked, level):   # IMP: every replica prunes and rewinds its own
        return stack_replicas([next_level_state(plan._replace(cfg=rep.cfg), part, unstack_replica(stacked, r), level)
                               for r, (rep, part) in enumerate(zip(replicas, all_parts))])

    def save(epoch, stacked, elapsed):
        meta = {"epoch": epoch, "step": int(stacked.step), "elapsed": elapsed, "fingerprint": fingerprint(top_cfg),
                "replicas": {str(rep.seed): {"records": rep.records, "interval": track.interval.to_json(),
                                             "wandb_id": rep.logger.run_id} for rep, track in zip(replicas, tracks)}}
        checkpoints.save(epoch, stacked, data_keys[0], meta)

    train_epochs(plan, parts.storage, parts.pairs, stacked, start_epoch, tracks,
                 epoch_fn=lambda stacked, epoch, steps: compiled[steps](stacked, x, y, keys(epoch), index),
                 level_change=level_change, save=save, stopping=stopping, clock=t_start)
