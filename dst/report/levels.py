"""Lottery-ticket runs (``sparsity=imp``) in a report: test accuracy against the fraction of weights
remaining, level by level, averaged over seeds (``level/<L>/...`` in each run's summary)."""

from __future__ import annotations

import pathlib
import re

import matplotlib.pyplot as plt
from matplotlib.ticker import FixedFormatter
from matplotlib.ticker import FixedLocator
from matplotlib.ticker import NullLocator

from dst.report.collect import RunInfo
from dst.report.figures import assign_styles
from dst.report.figures import save
from dst.report.summarize import GROUP_KEYS
from dst.report.summarize import mean_std
from dst.report.summarize import setting_groups

LEVEL_KEY = re.compile(r"^level/(\d+)/density$")
PLOT = "lottery_levels.png"


def level_rows(runs: list[RunInfo]) -> list[dict]:
    """One row per setting and level of the finished iterative runs: ``density`` (fraction of weights
    remaining, mean), ``test_accuracy_mean/std`` (the level's final) and ``best_test_accuracy_mean/std``,
    and ``runs``."""
    rows = []
    for values, members in setting_groups(runs).items():
        levels = sorted({int(m.group(1)) for r in members for k in r.summary if (m := LEVEL_KEY.match(k))})
        for level in levels:
            have = [r for r in members if f"level/{level}/density" in r.summary]
            row = {**dict(zip(GROUP_KEYS, values)), "level": level,
                   "density": mean_std([float(r.summary[f"level/{level}/density"]) for r in have])[0],
                   "runs": len(have)}
            for column in ("test_accuracy", "best_test_accuracy"):
                row[f"{column}_mean"], row[f"{column}_std"] = mean_std(
                    [float(r.summary[f"level/{level}/{column}"]) for r in have])
            rows.append(row)
    return rows


def _label(row: dict) -> str:
    return " ".join(str(row[k]) for k in ("algorithm", "model", "dataset", "settings") if row[k])


def markdown(rows: list[dict]) -> list[str]:
    """The report's section on iterative runs: a row per level of each setting."""
    if not rows:
        return []
    lines = ["", "## Lottery tickets: test accuracy (%) by level", "",
             "| setting | level | weights remaining | final test acc. | best test acc. | runs |",
             "| --- | --- | --- | --- | --- | --- |"]
    pm = lambda m, s: f"{100 * m:.2f} ± {100 * s:.2f}"
    for r in rows:
        lines.append(f"| {_label(r)} | {r['level']} | {r['density']:.4f} | "
                     f"{pm(r['test_accuracy_mean'], r['test_accuracy_std'])} | "
                     f"{pm(r['best_test_accuracy_mean'], r['best_test_accuracy_std'])} | {r['runs']} |")
    return lines + ["", f"![{PLOT}]({PLOT})"]


def plot_levels(rows: list[dict], path) -> pathlib.Path:
    """Best test accuracy (mean ± std over seeds) against the fraction of weights remaining, on a log
    axis that shrinks to the right as pruning proceeds: one line per setting, one point per level."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = list(dict.fromkeys(_label(r) for r in rows))
    styles = assign_styles((label, label.split()[0]) for label in labels)
    for label in labels:
        mine = sorted((r for r in rows if _label(r) == label), key=lambda r: -r["density"])
        colour, marker = styles[label]
        ax.errorbar([r["density"] for r in mine], [100 * r["best_test_accuracy_mean"] for r in mine],
                    yerr=[100 * r["best_test_accuracy_std"] for r in mine], color=colour, marker=marker,
                    capsize=3, label=label)
    ax.set_xscale("log")
    ticks = sorted({round(r["density"], 6) for r in rows}, reverse=True)
    ticks = ticks[::-(-len(ticks) // 8)]          # at most 8 labels, from the dense end
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter([f"{100 * t:.3g}%" for t in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.invert_xaxis()
    ax.set_xlabel("fraction of weights remaining (log)")
    ax.set_ylabel("best test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
