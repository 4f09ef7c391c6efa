"""``report.md``, ``report.csv``, ``curves.csv`` and the plots of a set of runs."""

from __future__ import annotations

import csv
import math
import pathlib

from dst.report import levels
from dst.report.collect import RunInfo
from dst.report.figures import CURVE_PLOTS
from dst.report.figures import plot_accuracy_vs_sparsity
from dst.report.figures import plot_itop_over_training
from dst.report.figures import plot_test_accuracy_over_training
from dst.report.summarize import CURVE_KEYS
from dst.report.summarize import GROUP_KEYS
from dst.report.summarize import METRICS
from dst.report.summarize import curve_column
from dst.report.summarize import curve_rows
from dst.report.summarize import group_rows

PLOTS = ("accuracy_vs_sparsity.png", *CURVE_PLOTS)


def _pm(mean, std, scale=1.0, digits=2):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown(rows: list[dict], runs: list[RunInfo], roots: list[pathlib.Path]) -> str:
    # The settings column appears only when some runs differ in more than the five base keys.
    extra = any(r["settings"] for r in rows)
    lines = ["# Report", "",
             f"{sum(r.status == 'finished' for r in runs)} finished runs of {len(runs)} below "
             f"{', '.join(f'`{root}`' for root in roots)}; "
             "mean ± sample std over the finished runs (seeds) of each setting.", "",
             "| algorithm | sparsity | distribution | model | data set | " + ("other settings | " if extra else "")
             + "test acc. (%) | best test acc. (%) | train FLOPs (× dense) | ITOP rate | runs |",
             "| --- " * (11 if extra else 10) + "|"]
    for r in rows:
        settings = f"{r['settings'] or '—'} | " if extra else ""
        lines.append(f"| {r['algorithm']} | {r['sparsity']} | {r['distribution']} | {r['model']} | {r['dataset']} | "
                     f"{settings}"
                     f"{_pm(r['test_accuracy_mean'], r['test_accuracy_std'], 100)} | "
                     f"{_pm(r['best_test_accuracy_mean'], r['best_test_accuracy_std'], 100)} | "
                     f"{_pm(r['flops_train_relative_mean'], r['flops_train_relative_std'], 1, 3)} | "
                     f"{_pm(r['itop_rate_mean'], r['itop_rate_std'], 1, 3)} | {r['runs']} |")
    repeated = [r for r in rows if len(set(r["seeds"])) < len(r["seeds"])]
    if repeated:
        lines += ["", "**Repeated seeds**: these rows average runs with the same seed (the same setting run "
                  "twice, e.g. two sweeps over one folder), which understates the spread:", ""]
        lines += [f"* {r['algorithm']} {r['sparsity']} {r['distribution']} {r['model']} {r['dataset']} "
                  f"{r['settings']}: seeds {', '.join(map(str, r['seeds']))}".rstrip() for r in repeated]
    lines += by_sparsity(rows)
    lines += levels.markdown(levels.level_rows(runs))
    others = [r for r in runs if r.status != "finished"]
    lines += ["", "## Runs not averaged in", ""]
    if not others:
        lines.append("None: every run finished.")
    for r in others:
        why = f": {r.error}" if r.error else ""
        lines.append(f"* `{_rel(r.path, roots)}`: {r.status}{why}")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in PLOTS]
    return "\n".join(lines) + "\n"


def by_sparsity(rows: list[dict]) -> list[str]:
    """The table papers print: final test accuracy with a row per method and a column per sparsity, for
    each model and data set that were run at more than one sparsity (the dense run is its own row). A
    method's rows follow the main table's, so a setting swept at one sparsity only gives that method
    rows with gaps (—)."""
    lines = []
    for model, dataset in dict.fromkeys((r["model"], r["dataset"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["dataset"]) == (model, dataset)]
        levels = sorted({float(r["sparsity"] or 0) for r in mine if r["sparsity"]})
        if len(levels) < 2:
            continue
        lines += ["", f"## Test accuracy (%) by sparsity: {model}, {dataset}", "",
                  "| method | " + " | ".join(f"{s:g}" for s in levels) + " |", "| --- " * (len(levels) + 1) + "|"]
        methods = dict.fromkeys((r["algorithm"], r["distribution"], r["settings"]) for r in mine)
        for algorithm, distribution, settings in methods:
            cells = {float(r["sparsity"] or 0): _pm(r["test_accuracy_mean"], r["test_accuracy_std"], 100)
                     for r in mine if (r["algorithm"], r["distribution"], r["settings"]) ==
                     (algorithm, distribution, settings)}
            name = " ".join(str(v) for v in (algorithm, distribution, settings) if v)
            if set(cells) == {0.0}:      # a dense baseline: one number, the same at every level
                lines.append(f"| {name} (dense) | " + " | ".join(cells[0.0] for _ in levels) + " |")
                continue
            lines.append(f"| {name} | " + " | ".join(cells.get(s, "—") for s in levels) + " |")
    return lines


def _rel(path: pathlib.Path, roots: list[pathlib.Path]) -> str:
    for root in roots:
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
    columns = list(GROUP_KEYS) + [f"{c}_{s}" for c, _ in METRICS for s in ("mean", "std")] + ["runs", "seeds"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "seeds": " ".join(str(s) for s in r["seeds"])})


def write_curves_csv(table: list[dict], path: pathlib.Path, keys=CURVE_KEYS) -> None:
    """Write ``curves.csv``, the per-epoch table behind the over-training figures
    (:func:`dst.report.summarize.curve_rows`), one row per setting and epoch::

        algorithm,sparsity,distribution,model,dataset,settings,epoch,
        test_accuracy_mean,test_accuracy_std,test_accuracy_runs,itop_rate_mean,itop_rate_std,itop_rate_runs

    The six setting columns are those of ``report.csv`` (the same values, so a row finds its setting
    there); ``epoch`` is ``step`` for runs whose records carry no epoch. Per record key (``test/accuracy``
    as ``test_accuracy``), the mean and sample std over the setting's finished runs at that epoch, as
    logged (fractions, not %), and how many runs that is; a key not logged at that epoch leaves its three
    cells empty. :func:`dst.report.figures.read_curves_csv` reads it back."""
    x = next((k for k in ("epoch", "step") if table and k in table[0]), "epoch")
    columns = list(GROUP_KEYS) + [x] + [f"{curve_column(k)}_{s}" for k in keys for s in ("mean", "std", "runs")]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)


def write_report(runs: list[RunInfo], out_dir, root=None) -> tuple[pathlib.Path, list[dict]]:
    """Write ``report.md``, ``report.csv``, ``curves.csv`` and the plots into ``out_dir``; returns the
    markdown's path and the table's rows. ``root`` (a folder or a list of folders, default ``out_dir``) is
    where the runs were collected; run paths in the report are relative to it. The plots are drawn from
    the two tables, as ``dst-report --from-csv report.csv --curves-from curves.csv`` redraws them."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = group_rows(runs)
    roots = [root or out_dir] if isinstance(root, str | pathlib.Path | None) else list(root)
    (out_dir / "report.md").write_text(markdown(rows, runs, [pathlib.Path(r) for r in roots]))
    write_csv(rows, out_dir / "report.csv")
    table = curve_rows(runs)
    write_curves_csv(table, out_dir / "curves.csv")
    plot_accuracy_vs_sparsity(rows, out_dir / PLOTS[0])
    plot_test_accuracy_over_training(rows, table, out_dir / PLOTS[1])
    plot_itop_over_training(rows, table, out_dir / PLOTS[2])
    lottery = levels.level_rows(runs)
    if lottery:
        levels.plot_levels(lottery, out_dir / levels.PLOT)
    return out_dir / "report.md", rows
