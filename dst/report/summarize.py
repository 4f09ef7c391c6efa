"""Group runs by setting and aggregate their final metrics over seeds (mean and sample std).

A setting is algorithm × sparsity × distribution × model × data set, split further by every other config
value that differs among runs sharing those five (a swept ``optimizer.lr`` or
``sparsity.backward_sparsity``): runs with different hyperparameters are never averaged as if they were
seeds. Values that only say how a run was carried out (seed, name, logger, checkpoints, data paths) do not
split a setting.
"""

from __future__ import annotations

import json
import statistics

from dst.report.collect import RunInfo

GROUP_KEYS = ("algorithm", "sparsity", "distribution", "model", "dataset", "settings")
# Final metrics averaged over a group's finished runs: (column, summary key).
METRICS = (("test_accuracy", "test/accuracy"), ("best_test_accuracy", "best/test_accuracy"),
           ("flops_train_relative", "flops/train_relative"), ("itop_rate", "itop_rate"))
# The per-epoch records ``curves.csv`` holds (and the over-training figures show).
CURVE_KEYS = ("test/accuracy", "itop_rate")


# Config values that say how a run was carried out, not what was trained: they never split a setting.
RUN_ONLY = ("name", "logger", "hydra", "trainer.seed", "trainer.seeds", "trainer.resume",
            "trainer.checkpoint_every_epochs", "trainer.keep_checkpoints", "trainer.log_every_epochs",
            "trainer.epoch_loop", "trainer.progress_every_steps", "trainer.eval_batch_size", "dataset.data_dir",
            "dataset.workers", "dataset.chunk_steps")


def base_setting(run: RunInfo) -> dict:
    """The five keys every report groups by, from the run's config."""
    cfg = run.config
    sp, model, ds = cfg.get("sparsity", {}), cfg.get("model", {}), cfg.get("dataset", {})
    return {"algorithm": sp.get("algorithm"), "sparsity": sp.get("sparsity"), "distribution": sp.get("distribution"),
            "model": model.get("name") or model.get("_target_"), "dataset": ds.get("name")}


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _run_only(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in RUN_ONLY)


# A structure's own setting, shown with the structure and never otherwise (null under other structures).
STRUCTURE_SETTING = {"n_m": "sparsity.n_m", "block": "sparsity.block"}


def _shown(flat: dict, varying: list[str]) -> list[str]:
    """The keys a run's label shows: ``varying`` without the settings of structures it does not have,
    plus its structure (and the structure's setting) whenever it is not unstructured."""
    structure = flat.get("sparsity.structure") or "unstructured"
    own = STRUCTURE_SETTING.get(structure)
    keys = [k for k in varying if k not in STRUCTURE_SETTING.values() or k == own]
    if structure != "unstructured":
        keys += [k for k in ("sparsity.structure", own) if k and k in flat and k not in keys]
    return sorted(keys)


def other_settings(runs: list[RunInfo]) -> dict:
    """``{run path: "key=value, ..."}``: per finished run, the config values (outside ``RUN_ONLY``) that
    differ among the finished runs sharing its five base keys (among those that have the key); empty when
    nothing else differs."""
    families: dict[tuple, list[RunInfo]] = {}
    for run in runs:
        if run.status == "finished":
            families.setdefault(tuple(base_setting(run).values()), []).append(run)
    labels = {}
    for members in families.values():
        flats = {run.path: _flat(run.config) for run in members}
        keys = sorted({k for flat in flats.values() for k in flat if not _run_only(k)})
        # A key only some runs have (written by an older dst) splits nothing by its absence.
        varying = [k for k in keys if len({json.dumps(f[k], sort_keys=True, default=str)
                                           for f in flats.values() if k in f}) > 1]
        for path, flat in flats.items():
            labels[path] = ", ".join(f"{k}={flat[k]}" for k in _shown(flat, varying) if k in flat)
    return labels


def setting(run: RunInfo, others: dict | None = None) -> dict:
    """The group a run belongs to: its five base keys plus ``settings``, the other values that set it
    apart (from :func:`other_settings` over the runs being compared)."""
    return {**base_setting(run), "settings": (others or {}).get(run.path, "")}


def seed(run: RunInfo):
    return run.config.get("trainer", {}).get("seed")


def mean_std(values):
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def group_rows(runs: list[RunInfo]) -> list[dict]:
    """One row per setting over its *finished* runs: ``<metric>_mean``, ``<metric>_std``, ``runs``,
    ``seeds``; sorted by data set, model, distribution, algorithm and sparsity."""
    groups = setting_groups(runs)
    rows = []
    for key, members in groups.items():
        row = dict(zip(GROUP_KEYS, key))
        for column, source in METRICS:
            values = [float(r.summary[source]) for r in members if isinstance(r.summary.get(source), int | float)]
            row[f"{column}_mean"], row[f"{column}_std"] = mean_std(values)
        row["runs"] = len(members)
        row["seeds"] = sorted((seed(r) for r in members), key=lambda s: (s is None, s))
        rows.append(row)
    order = lambda r: tuple(str(r[k]) if k != "sparsity" else f"{float(r[k] or 0):08.5f}"
                            for k in ("dataset", "model", "distribution", "algorithm", "sparsity", "settings"))
    return sorted(rows, key=order)


def setting_groups(runs: list[RunInfo]) -> dict[tuple, list[RunInfo]]:
    """The finished runs by setting (values in ``GROUP_KEYS`` order)."""
    others = other_settings(runs)
    groups: dict[tuple, list[RunInfo]] = {}
    for run in runs:
        if run.status == "finished":
            groups.setdefault(tuple(setting(run, others)[k] for k in GROUP_KEYS), []).append(run)
    return groups


def curves(members: list[RunInfo], key: str, x: str = "step"):
    """``(xs, mean, std)`` of ``key`` over training across runs, at the values of ``x`` (``step`` or
    ``epoch``) every run logged."""
    per_run = [{r[x]: r[key] for r in run.records if isinstance(r.get(key), int | float) and x in r}
               for run in members]
    if not per_run:
        return [], [], []
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    means, stds = [], []
    for s in steps:
        m, d = mean_std([p[s] for p in per_run])
        means.append(m)
        stds.append(d)
    return steps, means, stds


def curve_column(key: str) -> str:
    """A record key as a ``curves.csv`` column stem: ``test/accuracy`` -> ``test_accuracy``."""
    return key.replace("/", "_")


def curve_rows(runs: list[RunInfo], keys=CURVE_KEYS) -> list[dict]:
    """The rows of ``curves.csv``: for each setting of :func:`setting_groups` (finished runs) and each x
    value, the ``GROUP_KEYS`` columns, the x column and, per key of ``keys``, ``<stem>_mean``,
    ``<stem>_std`` and ``<stem>_runs`` (stem: :func:`curve_column`) over the setting's runs, at the x values
    every one of them logged that key (:func:`curves`); ``None`` where a key has no value at that x. The x
    column is ``epoch``, or ``step`` when some record holding one of ``keys`` carries no epoch (older
    runs). Rows follow the settings' order, then x ascending."""
    groups = setting_groups(runs)
    by_epoch = all("epoch" in rec for members in groups.values() for run in members for rec in run.records
                   if any(k in rec for k in keys))
    x = "epoch" if by_epoch else "step"
    rows = []
    for values, members in groups.items():
        per_key = {}
        for key in keys:
            xs, means, stds = curves(members, key, x=x)
            per_key[key] = {at: (m, d) for at, m, d in zip(xs, means, stds)}
        for at in sorted({at for points in per_key.values() for at in points}):
            row = {**dict(zip(GROUP_KEYS, values)), x: at}
            for key, points in per_key.items():
                m, d = points.get(at, (None, None))
                stem = curve_column(key)
                row[f"{stem}_mean"], row[f"{stem}_std"] = m, d
                row[f"{stem}_runs"] = len(members) if at in points else None
            rows.append(row)
    return rows
