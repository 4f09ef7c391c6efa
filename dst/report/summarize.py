"""Group runs by setting and aggregate their final metrics over seeds (mean and sample std)."""

from __future__ import annotations

import statistics

from dst.report.collect import RunInfo

GROUP_KEYS = ("algorithm", "sparsity", "distribution", "model", "dataset")
# Final metrics averaged over a group's finished runs: (column, summary key).
METRICS = (("test_accuracy", "test/accuracy"), ("best_test_accuracy", "best/test_accuracy"),
           ("flops_train_relative", "flops/train_relative"), ("itop_rate", "itop_rate"))


def setting(run: RunInfo) -> dict:
    """The group a run belongs to, from its config."""
    cfg = run.config
    sp, model, ds = cfg.get("sparsity", {}), cfg.get("model", {}), cfg.get("dataset", {})
    return {"algorithm": sp.get("algorithm"), "sparsity": sp.get("sparsity"), "distribution": sp.get("distribution"),
            "model": model.get("name") or model.get("_target_"), "dataset": ds.get("name")}


def seed(run: RunInfo):
    return run.config.get("trainer", {}).get("seed")


def _mean_std(values):
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def group_rows(runs: list[RunInfo]) -> list[dict]:
    """One row per setting over its *finished* runs: ``<metric>_mean``, ``<metric>_std``, ``runs``,
    ``seeds``; sorted by data set, model, distribution, algorithm and sparsity."""
    groups: dict[tuple, list[RunInfo]] = {}
    for run in runs:
        if run.status == "finished":
            groups.setdefault(tuple(setting(run)[k] for k in GROUP_KEYS), []).append(run)
    rows = []
    for key, members in groups.items():
        row = dict(zip(GROUP_KEYS, key))
        for column, source in METRICS:
            values = [float(r.summary[source]) for r in members if isinstance(r.summary.get(source), int | float)]
            row[f"{column}_mean"], row[f"{column}_std"] = _mean_std(values)
        row["runs"] = len(members)
        row["seeds"] = sorted((seed(r) for r in members), key=lambda s: (s is None, s))
        rows.append(row)
    order = lambda r: tuple(str(r[k]) if k != "sparsity" else f"{float(r[k] or 0):08.5f}"
                            for k in ("dataset", "model", "distribution", "algorithm", "sparsity"))
    return sorted(rows, key=order)


def curves(members: list[RunInfo], key: str):
    """``(steps, mean, std)`` of ``key`` over training across runs, at the steps every run logged."""
    per_run = [{r["step"]: r[key] for r in run.records if isinstance(r.get(key), int | float)} for run in members]
    if not per_run:
        return [], [], []
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    means, stds = [], []
    for s in steps:
        m, d = _mean_std([p[s] for p in per_run])
        means.append(m)
        stds.append(d)
    return steps, means, stds
