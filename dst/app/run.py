"""One training run from a plain config dict: data, model, masks, algorithm, the epoch loop, outputs.

Hydra-free on purpose: ``dst.app.cli`` resolves the config and calls :func:`run`; tests and notebooks can
call it with a dict.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import dst
from dst import metrics as run_metrics
from dst import schedules
from dst.app.validate import ConfigError
from dst.app.validate import algorithm_hparams
from dst.app.validate import check_algorithm
from dst.app.validate import check_data
from dst.app.validate import validate
from dst.data import load
from dst.logging import Progress
from dst.logging import RunLogger
from dst.models import build_model
from dst.optimizers import make_optimizer
from dst.plotting import plot_curves


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def _optimizer(cfg: dict, total_steps: int):
    opt = dict(cfg["optimizer"])
    return make_optimizer(opt.pop("name"), total_steps, **opt)


def _drop_fraction(sp: dict, hparams: dict, step: int) -> float:
    """The drop fraction the algorithm would use at ``step`` (0 outside its update window)."""
    if "drop_fraction" not in hparams:
        return 0.0
    if not hparams.get("start_step", 0) <= step < hparams["end_step"]:
        return 0.0
    return float(schedules.drop_fraction(step, hparams["drop_fraction"], hparams.get("drop_schedule", "cosine"),
                                         hparams["end_step"]))


def prepare(cfg: dict):
    """Validate, load data and size the run; raise :class:`ConfigError` before anything compiles."""
    validate(cfg)
    check_data(cfg)
    data = load(cfg["dataset"]["name"], cfg["dataset"].get("data_dir"),
                val_fraction=cfg["dataset"]["val_fraction"], seed=cfg["trainer"]["seed"],
                normalize=cfg["dataset"]["normalize"])
    batch = cfg["trainer"]["batch_size"]
    if batch > data.train_x.shape[0]:
        raise ConfigError(f"trainer.batch_size must be at most the {data.train_x.shape[0]} training "
                          f"examples; got {batch}.")
    total_steps = cfg["trainer"]["epochs"] * (data.train_x.shape[0] // batch)
    algo = check_algorithm(cfg["sparsity"], total_steps)
    return data, algo, total_steps


def run(cfg: dict, run_dir, *, stream=None) -> dict:
    """Train as ``cfg`` says, writing every output into ``run_dir``; returns the summary."""
    run_dir = pathlib.Path(run_dir)
    data, algo, total_steps = prepare(cfg)
    sp, trainer = cfg["sparsity"], cfg["trainer"]
    hparams = algorithm_hparams(sp, total_steps)

    model = build_model(cfg["model"]["name"], num_classes=int(data.train_y.max()) + 1,
                        dropout=cfg["model"]["dropout"], hidden=cfg["model"].get("hidden", (300, 100)))
    key = jax.random.key(cfg["trainer"]["seed"])
    k_init, k_mask, k_state, k_data = jax.random.split(key, 4)
    params = model.init(k_init, jnp.zeros((1,) + data.train_x.shape[1:]))["params"]
    # Algorithms that prune during training start from `initial_sparsity` (0: dense).
    start_sparsity = sp.get("initial_sparsity")
    start_sparsity = sp["sparsity"] if start_sparsity is None else start_sparsity
    densities = ({} if start_sparsity == 0 else
                 dst.layer_densities(params, start_sparsity, sp["distribution"],
                                     erk_power_scale=sp["erk_power_scale"], dense_layers=sp["dense_layers"]))
    masks = dst.init_masks(k_mask, params, densities)
    layers = dst.sparsifiable_layers(params)
    flops = run_metrics.layer_flops(model, params, data.train_x.shape)
    f_dense = sum(flops.values())
    apply_fn = dst.flax_apply(model)
    train_x, train_y = jnp.asarray(data.train_x), jnp.asarray(data.train_y)
    masks = dst.train.prune_at_init(algo, k_mask, params, masks, apply_fn, train_x, train_y,
                                    trainer["batch_size"])
    densities = {n: d for n, d in dst.density_report(masks, layers).items() if n != "global"}

    tx = _optimizer(cfg, total_steps)
    state = dst.create_train_state(k_state, params, masks, tx, algo)
    epoch_fn = dst.train_epoch_fn(dst.make_train_step(apply_fn, tx, algo), trainer["batch_size"])
    evaluate = dst.evaluate_fn(apply_fn, trainer["eval_batch_size"])
    test_x, test_y = jnp.asarray(data.test_x), jnp.asarray(data.test_y)
    val = (jnp.asarray(data.val_x), jnp.asarray(data.val_y)) if len(data.val_y) else None

    logger_cfg = cfg["logger"]
    logger = RunLogger(run_dir, cfg, use_wandb=logger_cfg["name"] == "wandb",
                       wandb_mode=logger_cfg.get("mode", "disabled"), project=logger_cfg.get("project", "dst"),
                       name=cfg.get("name"), group=logger_cfg.get("group"), tags=logger_cfg.get("tags", ()))
    progress = Progress(trainer["epochs"], stream=stream)
    say = lambda msg: print(msg, file=progress.stream, flush=True)
    say(f"dst: {cfg.get('name', 'run')} -> {run_dir}")
    say(f"data: {data.source} ({len(data.train_y)} train, {len(data.val_y)} val, {len(data.test_y)} test); "
        f"{total_steps} steps; densities "
        + ", ".join(f"{n}={d:.4f}" for n, d in densities.items()))

    t_compile = time.perf_counter()
    epoch_fn = epoch_fn.lower(state, train_x, train_y, k_data).compile()  # keeps steps_per_sec honest
    say(f"compiled the train epoch in {time.perf_counter() - t_compile:.1f}s")

    records, cumulative_flops, interval = [], 0.0, None
    start, status = time.perf_counter(), "finished"
    try:
        for epoch in range(1, trainer["epochs"] + 1):
            t0 = time.perf_counter()
            state, m = epoch_fn(state, train_x, train_y, jax.random.fold_in(k_data, epoch))
            m = jax.device_get(m)
            seconds = time.perf_counter() - t0
            interval = _accumulate(interval, m, seconds)
            step = int(state.step)
            report = dst.density_report(state.masks, layers)
            f_sparse = run_metrics.sparse_forward_flops(flops, report)
            f_backward = (run_metrics.sparse_forward_flops(flops, dst.density_report(
                algo.trainable(state.algo_state, state.masks), layers)) if algo.trainable else f_sparse)
            cumulative_flops += sum(
                run_metrics.train_step_flops(sp["algorithm"], f_sparse, f_dense, t,
                                             update_every=hparams.get("update_every"),
                                             start_step=hparams.get("start_step", 0),
                                             end_step=hparams.get("end_step"), f_backward=f_backward)
                for t in range(step - len(m["loss"]), step))
            finite = bool(np.all(np.isfinite(m["loss"])))
            if epoch % trainer["log_every_epochs"] and epoch != trainer["epochs"] and finite:
                continue
            record = {"step": step, "epoch": epoch, **_train_metrics(interval)}
            record.update(_prefixed("test", evaluate(state.params, test_x, test_y)))
            if val is not None:
                record.update(_prefixed("val", evaluate(state.params, *val)))
            record["sparsity/global"] = 1.0 - report["global"]
            record.update({f"sparsity/{n}": 1.0 - report[n] for n in layers})
            record["itop_rate"] = run_metrics.itop_rate(state.ever_active, layers)
            record["drop_fraction"] = _drop_fraction(sp, hparams, step)
            record.update(_topology(interval, layers))
            dead = run_metrics.dead_units(state.masks, layers)
            record["dead_units/total"] = sum(dead.values())
            record.update({f"dead_units/{n}": c for n, c in dead.items()})
            record["flops/train_relative"] = cumulative_flops / (step * 3.0 * f_dense)
            record["steps_per_sec"] = len(interval["loss"]) / interval["seconds"]
            record["time/elapsed"] = time.perf_counter() - start
            logger.log(record)
            records.append(record)
            progress.update(epoch, record)
            interval = None
            if not finite:
                bad = step - len(m["loss"]) + int(np.argmin(np.isfinite(m["loss"])))
                raise NonFiniteLossError(
                    f"train/loss became {m['loss'][~np.isfinite(m['loss'])][0]} at step {bad} (epoch {epoch}); "
                    f"lower optimizer.lr (now {cfg['optimizer']['lr']}) or check the data.")
    except BaseException:
        status = "failed"
        raise
    finally:
        summary = dict(records[-1]) if records else {}
        summary.update({"status": status, "best/test_accuracy": max((r["test/accuracy"] for r in records),
                                                                   default=float("nan")),
                        "total_steps": int(state.step), "wall_time": time.perf_counter() - start,
                        "run_dir": str(run_dir), "initial_densities": json.dumps(densities)})
        if records:
            plot_curves(records, run_dir / "curves.png", title=cfg.get("name", ""))
        logger.finish(summary, exit_code=0 if status == "finished" else 1)
    say(f"metrics: {run_dir / 'metrics.jsonl'}\nsummary: {run_dir / 'summary.json'}\n"
        f"plot:    {run_dir / 'curves.png'}")
    return summary


def _accumulate(interval, m, seconds):
    """Concatenate per-step metrics across the epochs of one logging interval."""
    if interval is None:
        return {"seconds": seconds, **m}
    merged = jax.tree_util.tree_map(lambda a, b: np.concatenate([a, b]), {k: interval[k] for k in m}, m)
    return {"seconds": interval["seconds"] + seconds, **merged}


def _train_metrics(interval) -> dict:
    return {"train/loss": float(np.mean(interval["loss"])),
            "train/accuracy": float(np.mean(interval["accuracy"]))}


def _prefixed(prefix, values) -> dict:
    return {f"{prefix}/{k}": float(v) for k, v in values.items()}


def _topology(interval, layers) -> dict:
    """Update count and dropped/grown totals over the interval, overall and per sparse layer."""
    updates = int(np.sum(interval["updated"]))
    out = {"topology/updates": updates}
    for kind in ("dropped", "grown"):
        per_layer = {n: int(np.sum(interval[kind][n])) for n in layers}
        out[f"topology/{kind}"] = sum(per_layer.values())
        out[f"topology/{kind}_per_update"] = sum(per_layer.values()) / updates if updates else 0.0
        out.update({f"topology/{kind}/{n}": c for n, c in per_layer.items()})
    return out
