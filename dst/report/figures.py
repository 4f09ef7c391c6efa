"""The report's figures: what each one shows (computed here, and tested, apart from the drawing) and
the matplotlib drawing of that data.

* ``accuracy_vs_sparsity.png``: final test accuracy (%) against sparsity, one series per method with
  error bars of the seed spread (sample std), on a log scale of the remaining density ``1 - sparsity``
  (so 90/95/98/99% spread out; the ticks read as sparsity in %), the dense baseline as a horizontal
  line with a ±std band (never a point at sparsity 0), a panel per model and data set. Its data:
  :func:`accuracy_vs_sparsity_data`, from the report's rows (``report.csv``, see :func:`read_report_csv`).
* ``test_accuracy_over_training.png`` and ``itop_over_training.png``: the mean over seeds with a ±std
  band against the epoch, a panel per sparsity, the dense run's curve in each accuracy panel. Their data:
  :func:`curve_figure_data`, from the report's rows and the per-epoch table of ``curves.csv``
  (:func:`dst.report.summarize.curve_rows` over the runs' ``metrics.jsonl``, or :func:`read_curves_csv`);
  :func:`training_curves_data` is the same straight from runs.

Every method keeps one colour and marker in all three (:func:`assign_styles`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import itertools
import math
import pathlib
import re

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedFormatter  # noqa: E402
from matplotlib.ticker import FixedLocator  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from dst.report.summarize import GROUP_KEYS  # noqa: E402
from dst.report.summarize import curve_column  # noqa: E402
from dst.report.summarize import curve_rows  # noqa: E402
from dst.report.summarize import group_rows  # noqa: E402

# 15 colours that stay apart on white (matplotlib's tab10 without its grey, then six more) and 15 filled
# markers; pair i is (COLOURS[i], MARKERS[i]). Beyond 15 methods the pairs go on as
# (COLOURS[i % 15], MARKERS[(i + i // 15) % 15]), still all different. Black is the dense baseline's.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
           "#800000", "#000075", "#469990", "#f032e6", "#808000", "#e6ab02")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "p", "h", "d", "H", "8")
STYLES = tuple(zip(COLOURS, MARKERS))
# dst's algorithms keep their slot in every figure (when one series each): the same method looks the same
# in every report.
KNOWN = ("static", "set", "rigl", "snfs", "gmp", "snip", "grasp", "mest", "granet", "topkast", "srigl", "imp")
DENSE_COLOUR = "black"
# Chance accuracy by data set (1 / classes; CIFAR-100 at its 100 fine labels, the lowest plausible); an
# unknown data set gets 0.
CHANCE = {"mnist": 0.1, "fashion_mnist": 0.1, "kmnist": 0.1, "mnist1d": 0.1, "cifar10": 0.1, "cifar100": 0.01,
          "imagenet": 0.001, "image_folder": 0.0}
COLLAPSE_FRACTION = 0.25
CURVE_PLOTS = ("test_accuracy_over_training.png", "itop_over_training.png")
TEXT_COLUMNS = ("algorithm", "distribution", "model", "dataset", "settings")


class TableError(ValueError):
    """A stored table that cannot be redrawn; the message is one sentence naming the file."""


def style(i: int) -> tuple[str, str]:
    """The ``i``-th (colour, marker) pair; all different for ``i < 225``."""
    n = len(STYLES)
    return COLOURS[i % n], MARKERS[(i + i // n) % n]


def assign_styles(methods) -> dict[str, tuple[str, str]]:
    """``{label: (colour, marker)}`` for ``methods``, an iterable of ``(label, algorithm)``: a different pair
    per label. Labels are taken in sorted order; a label whose algorithm is one of :data:`KNOWN` takes that
    algorithm's slot when it is still free, every other label the lowest free slot. The same set of
    methods gets the same styles every time."""
    slots: dict[str, int] = {}
    pending = []
    for label, algorithm in sorted(set(methods)):
        slot = KNOWN.index(algorithm) if algorithm in KNOWN else None
        if label in slots:
            continue
        if slot is not None and slot not in slots.values():
            slots[label] = slot
        else:
            pending.append(label)
    free = (i for i in itertools.count() if i not in slots.values())
    for label in pending:
        if label not in slots:
            slots[label] = next(free)
    return {label: style(i) for label, i in slots.items()}


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_report_csv(path) -> list[dict]:
    """The rows of a ``report.csv`` (or an older one without the ``settings`` column), numbers as numbers
    and ``seeds`` as a list: what :func:`dst.report.summarize.group_rows` returned when it was written."""
    rows = []
    with pathlib.Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            row = {k: (v if k in TEXT_COLUMNS else _number(v)) for k, v in raw.items()}
            row.setdefault("settings", "")
            row["settings"] = row["settings"] or ""
            row["seeds"] = [_number(s) for s in str(raw.get("seeds", "")).split()]
            rows.append(row)
    return rows


def read_curves_csv(path) -> list[dict]:
    """The rows of a ``curves.csv`` (see :func:`dst.report.write.write_curves_csv`), as
    :func:`dst.report.summarize.curve_rows` returned them when it was written: the setting columns read as
    :func:`read_report_csv` reads them, numbers as numbers, empty cells ``None``."""
    path = pathlib.Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if not set(GROUP_KEYS) <= set(columns) or not {"epoch", "step"} & set(columns):
            raise TableError(f"{path} is not a curves.csv written by dst-report (it needs the columns "
                             f"{', '.join(GROUP_KEYS)} and epoch or step).")
        rows = []
        for raw in reader:
            row = {k: (v if k in TEXT_COLUMNS else _number(v) if k in GROUP_KEYS or v != "" else None)
                   for k, v in raw.items()}
            row["settings"] = row["settings"] or ""
            rows.append(row)
    return rows


def is_dense(row: dict) -> bool:
    """A dense baseline: the ``dense`` algorithm or sparsity 0."""
    return row["algorithm"] == "dense" or not float(row["sparsity"] or 0)


def _short_settings(settings: str) -> str:
    """``optimizer.lr=0.1, sparsity.penalty=0.001`` -> ``lr=0.1, penalty=0.001``."""
    if not settings:
        return ""
    parts = re.split(r", (?=[\w.]+=)", settings)
    return ", ".join(re.sub(r"^[\w.]*\.(?=\w+=)", "", p) for p in parts)


def method_key(row: dict) -> tuple:
    return row["algorithm"], row["distribution"], row["settings"] or ""


def method_labels(rows: list[dict]) -> dict[tuple, str]:
    """``{(algorithm, distribution, settings): label}``: the algorithm, its distribution in brackets when
    it is not the one most sparse rows use, and the other settings that set it apart (last key part)."""
    keys = list(dict.fromkeys(method_key(r) for r in rows))
    counts = collections.Counter(r["distribution"] for r in rows if not is_dense(r))
    usual = counts.most_common(1)[0][0] if counts else None
    labels = {}
    for algorithm, distribution, settings in keys:
        label = str(algorithm)
        if algorithm != "dense" and distribution != usual:
            label += f" ({distribution})"
        if settings:
            label += f", {_short_settings(settings)}"
        labels[(algorithm, distribution, settings)] = label
    return labels


@dataclasses.dataclass
class Series:
    """One method's points, in order of sparsity. Accuracies in %."""
    label: str
    algorithm: str
    colour: str
    marker: str
    sparsity: list[float]
    x: list[float]              # the remaining density, 1 - sparsity (the log x axis)
    mean: list[float]           # final test accuracy, mean over seeds
    std: list[float]            # its sample std over seeds (the error bar)
    runs: list[int]
    collapsed: list[bool]       # below the panel's ``collapse_below``: drawn at the bottom edge


@dataclasses.dataclass
class Baseline:
    label: str
    mean: float
    std: float
    runs: int


@dataclasses.dataclass
class SparsityPanel:
    model: str
    dataset: str
    series: list[Series]
    baselines: list[Baseline]
    chance: float               # %
    collapse_below: float       # %
    ylim: tuple[float, float]   # from the runs that trained and the baselines (mean ± std), padded
    collapsed_y: float          # where collapsed points are drawn (the bottom edge)
    densities: list[float]      # the x ticks: every remaining density with a point, ascending


def _limits(intervals, pad_fraction=0.08, min_pad=0.5):
    lo = min((m - s for m, s in intervals), default=0.0)
    hi = max((m + s for m, s in intervals), default=100.0)
    pad = max(pad_fraction * (hi - lo), min_pad)
    return lo, hi, pad


def accuracy_vs_sparsity_data(rows: list[dict], chance: float | None = None) -> list[SparsityPanel]:
    """What ``accuracy_vs_sparsity.png`` shows, a panel per model and data set of ``rows`` (the report's
    rows, from :func:`dst.report.summarize.group_rows` or :func:`read_report_csv`; rows without a final
    test accuracy are left out).

    * Dense baselines (:func:`is_dense`) are not points: each is a horizontal line at its mean with a
      ±std band.
    * Every other method (algorithm, distribution, other settings) is a series of points at
      ``x = 1 - sparsity`` with the mean final test accuracy over seeds and its sample std as error bar.
    * **Collapse rule**: a point is *collapsed* when its mean is below ``chance + (reference - chance) / 4``,
      where chance is 1 / classes of the data set (``chance`` overrides it, as a fraction; an unknown data
      set gets 0) and the reference is the dense baseline's mean (the best one if several), or the best
      sparse mean when the panel has no dense run. It kept less than a quarter of the way from chance to
      the reference: the run did not train (MNIST-1D's Top-KAST at 95%, 30.9% against dense 67.2%, is
      poor but trained; Fashion-MNIST's Top-KAST at 98%, 7.5%, did not). The rule sees a setting's mean
      only: one collapsed seed among trained ones is not flagged and shows as a long error bar.
    * ``ylim`` spans mean ± std of the points that are not collapsed and of the baselines, padded by 8% of
      that span (at least 0.5 points) above and below; with collapsed points the bottom gets 2.5 pads more
      and they are drawn at its edge (``collapsed_y``), marked, so they never flatten the others.
    """
    panels = []
    labels = method_labels(rows)
    styles = assign_styles((labels[method_key(r)], r["algorithm"]) for r in rows if not is_dense(r))
    for model, dataset in dict.fromkeys((r["model"], r["dataset"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["dataset"]) == (model, dataset) and _finite(r["test_accuracy_mean"])]
        baselines = [Baseline(labels[method_key(r)], 100 * r["test_accuracy_mean"],
                              100 * (r["test_accuracy_std"] if _finite(r["test_accuracy_std"]) else 0.0), r["runs"])
                     for r in mine if is_dense(r)]
        sparse = [r for r in mine if not is_dense(r)]
        chance_pct = 100 * (chance if chance is not None else CHANCE.get(dataset, 0.0))
        means = [100 * r["test_accuracy_mean"] for r in sparse]
        reference = max(b.mean for b in baselines) if baselines else max(means, default=chance_pct)
        collapse_below = chance_pct + COLLAPSE_FRACTION * (reference - chance_pct)
        series = []
        for key in sorted(dict.fromkeys(method_key(r) for r in sparse), key=lambda k: labels[k]):
            points = sorted((r for r in sparse if method_key(r) == key), key=lambda r: float(r["sparsity"]))
            sparsity = [float(r["sparsity"]) for r in points]
            mean = [100 * r["test_accuracy_mean"] for r in points]
            std = [100 * r["test_accuracy_std"] if _finite(r["test_accuracy_std"]) else 0.0 for r in points]
            colour, marker = styles[labels[key]]
            series.append(Series(labels[key], key[0], colour, marker, sparsity, [1 - s for s in sparsity], mean, std,
                                 [r["runs"] for r in points], [m < collapse_below for m in mean]))
        intervals = [(m, s) for se in series for m, s, c in zip(se.mean, se.std, se.collapsed) if not c]
        intervals += [(b.mean, b.std) for b in baselines]
        lo, hi, pad = _limits(intervals)
        any_collapsed = any(c for se in series for c in se.collapsed)
        ylim = (lo - pad * (3.5 if any_collapsed else 1.0), hi + pad)
        densities = sorted({x for se in series for x in se.x})
        panels.append(SparsityPanel(model, dataset, series, baselines, chance_pct, collapse_below, ylim, ylim[0],
                                    densities))
    return panels


def _sparsity_tick(density: float) -> str:
    return f"{round(100 * (1 - density), 4):g}"


def _log_x(ax, densities: list[float]) -> None:
    """Log x axis of the remaining density, sparsity increasing to the right, a tick (in sparsity %) at
    each density that has a point; the density (%) on the top axis."""
    ax.set_xscale("log")
    if densities:
        lo, hi = math.log10(min(densities)), math.log10(max(densities))
        margin = max(0.12 * (hi - lo), 0.12)
        ax.set_xlim(10 ** (hi + margin), 10 ** (lo - margin))    # inverted: denser on the left
    ax.xaxis.set_major_locator(FixedLocator(densities))
    ax.xaxis.set_major_formatter(FixedFormatter([_sparsity_tick(d) for d in densities]))
    ax.xaxis.set_minor_locator(NullLocator())
    top = ax.secondary_xaxis("top")
    top.xaxis.set_major_locator(FixedLocator(densities))
    top.xaxis.set_major_formatter(FixedFormatter([f"{round(100 * d, 4):g}" for d in densities]))
    top.xaxis.set_minor_locator(NullLocator())
    top.tick_params(labelsize=8, colors="0.35")
    top.set_xlabel("remaining density (%)", fontsize=8, color="0.35")


def _dodge(densities: list[float], n: int) -> list[float]:
    """Multiplicative x offsets that set ``n`` series side by side at each density, so their error bars
    do not hide each other: together at most a fifth of the smallest gap between densities (log scale)."""
    logs = sorted({math.log10(d) for d in densities})
    gap = min((b - a for a, b in zip(logs, logs[1:])), default=0.4)
    width = min(0.2 * gap, 0.012 * (n - 1), 0.1)
    step = width / (n - 1) if n > 1 else 0.0
    return [10 ** ((k - (n - 1) / 2) * step) for k in range(n)]


def _legend(fig, axes, extra=()) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    for h in extra:
        handles.append(h)
        labels.append(h.get_label())
    if handles:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.97), fontsize=8, frameon=False,
                   borderaxespad=0.2)


def _grid(n: int, width=4.6, height=3.6, max_cols=3):
    cols = min(n, max_cols) or 1
    rows = math.ceil(n / cols) if n else 1
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:max(n, 1)]


def accuracy_vs_sparsity_figure(panels: list[SparsityPanel]):
    """Draw :func:`accuracy_vs_sparsity_data`'s panels; returns the figure (not saved, not closed)."""
    fig, axes = _grid(len(panels), width=6.4 if len(panels) == 1 else 4.8,
                      height=4.4 if len(panels) == 1 else 3.8)
    several = len(panels) > 1
    collapsed_note = None
    for ax, panel in zip(axes, panels):
        for b in panel.baselines:
            line = ax.axhline(b.mean, color=DENSE_COLOUR, lw=1.4, ls="--", zorder=1,
                              label=f"{b.label}: {b.mean:.2f} ± {b.std:.2f}")
            line.set_gid("dense-baseline")
            band = ax.axhspan(b.mean - b.std, b.mean + b.std, color=DENSE_COLOUR, alpha=0.12, lw=0, zorder=0)
            band.set_gid("dense-band")
        offsets = _dodge(panel.densities, len(panel.series))
        for se, offset in zip(panel.series, offsets):
            xs = [x * offset for x in se.x]
            kept = [i for i, c in enumerate(se.collapsed) if not c]
            bars = ax.errorbar([xs[i] for i in kept], [se.mean[i] for i in kept], yerr=[se.std[i] for i in kept],
                               color=se.colour, marker=se.marker, ms=6, lw=1.3, capsize=2.5, elinewidth=1,
                               label=se.label, zorder=3)
            bars.lines[0].set_gid(f"series:{se.label}")
            for i, c in enumerate(se.collapsed):
                if not c:
                    continue
                ax.plot([xs[i]], [panel.collapsed_y], ls="none", marker=se.marker, ms=8, mfc="white",
                        mec=se.colour, mew=1.6, clip_on=False, zorder=4, gid=f"collapsed:{se.label}")
                neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(xs) and not se.collapsed[j]]
                for j in neighbours:   # the series' line runs down to the collapsed point, dotted
                    ax.plot([xs[j], xs[i]], [se.mean[j], panel.collapsed_y], color=se.colour, ls=":", lw=1.1,
                            zorder=2)
                ax.annotate(f"{se.algorithm}: {se.mean[i]:.1f} ± {se.std[i]:.1f}%", (xs[i], panel.collapsed_y),
                            xytext=(0, 9), textcoords="offset points", ha="center", va="bottom", fontsize=7,
                            color=se.colour, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                                   "alpha": 0.8})
                collapsed_note = Line2D([], [], ls="none", marker="o", ms=7, mfc="white", mec="0.3", mew=1.4,
                                        label=f"collapsed (< {panel.collapse_below:.0f}%): "
                                              "drawn at the bottom edge")
        _log_x(ax, panel.densities)
        ax.set_ylim(*panel.ylim)
        ax.set_xlabel("sparsity (%); log scale of the remaining density")
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(alpha=0.3, which="major")
        if several:
            ax.set_title(f"{panel.model}, {panel.dataset}", fontsize=10)
    _legend(fig, axes, [collapsed_note] if collapsed_note else [])
    fig.tight_layout()
    return fig


@dataclasses.dataclass
class CurveSeries:
    """One setting's curve: mean and sample std over its runs at the epochs every run logged."""
    label: str
    algorithm: str
    colour: str
    marker: str
    x: list[float]
    mean: list[float]
    std: list[float]
    runs: int
    collapsed: bool             # its final test accuracy is collapsed (the rule of accuracy_vs_sparsity_data)
    dense: bool = False


@dataclasses.dataclass
class CurvePanel:
    model: str
    dataset: str
    sparsity: float
    series: list[CurveSeries]


@dataclasses.dataclass
class CurveFigure:
    panels: list[CurvePanel]
    xlabel: str                 # epoch, or step when the records carry no epoch
    ylabel: str
    ylim: tuple[float, float]   # shared by the panels; from the series that did not collapse


def curve_figure_data(rows: list[dict], table: list[dict], key: str, scale: float = 100.0,
                      chance: float | None = None, with_dense: bool = True,
                      floor: float | None = None) -> CurveFigure:
    """What the over-training figures show, from the report's ``rows`` (:func:`group_rows` or
    :func:`read_report_csv`) and the per-epoch ``table`` (:func:`dst.report.summarize.curve_rows` or
    :func:`read_curves_csv`): for each setting of ``rows`` that has a curve in ``table``, ``key``
    (``test/accuracy``, ``itop_rate``) times ``scale`` against the epoch, mean and sample std over its runs;
    a panel per model, data set and sparsity, with the dense setting's curve in each of its model's panels
    (``with_dense``). Settings of ``table`` that ``rows`` lacks are left out. Styles and labels are those of
    :func:`accuracy_vs_sparsity_data` on the same rows, and so is the collapse flag. ``ylim`` spans
    mean ± std of every series that did not collapse (padded by 5%; from ``floor`` when given), so a
    collapsed curve runs out of the bottom instead of squashing the others."""
    labels = method_labels(rows)
    styles = assign_styles((labels[method_key(r)], r["algorithm"]) for r in rows if not is_dense(r))
    collapsed = {}
    for panel in accuracy_vs_sparsity_data(rows, chance):
        for se in panel.series:
            for s, c in zip(se.sparsity, se.collapsed):
                collapsed[(panel.model, panel.dataset, se.label, s)] = c
    shown = {tuple(r[k] for k in GROUP_KEYS) for r in rows}
    x_key = "step" if table and "epoch" not in table[0] else "epoch"
    stem = curve_column(key)
    points: dict[tuple, list[dict]] = {}
    for t in table:
        values = tuple(t[k] for k in GROUP_KEYS)
        if values in shown and t.get(f"{stem}_mean") is not None:
            points.setdefault(values, []).append(t)
    built = []
    for values, mine in points.items():
        row = dict(zip(GROUP_KEYS, values))
        mine = sorted(mine, key=lambda t: t[x_key])
        label = labels[method_key(row)]
        dense = is_dense(row)
        colour, marker = (DENSE_COLOUR, "") if dense else styles[label]
        sparsity = float(row["sparsity"] or 0)
        built.append((row, CurveSeries(label, row["algorithm"], colour, marker, [t[x_key] for t in mine],
                                       [scale * t[f"{stem}_mean"] for t in mine],
                                       [scale * t[f"{stem}_std"] for t in mine], mine[0][f"{stem}_runs"],
                                       collapsed.get((row["model"], row["dataset"], label, sparsity), False),
                                       dense)))
    panels = []
    for model, dataset, sparsity in sorted({(r["model"], r["dataset"], float(r["sparsity"] or 0))
                                            for r, s in built if not s.dense}, key=lambda k: (str(k[:2]), k[2])):
        mine = [s for r, s in built if (r["model"], r["dataset"]) == (model, dataset) and not s.dense
                and float(r["sparsity"] or 0) == sparsity]
        mine.sort(key=lambda s: s.label)
        dense = [s for r, s in built if (r["model"], r["dataset"]) == (model, dataset) and s.dense]
        panels.append(CurvePanel(model, dataset, sparsity, (dense if with_dense else []) + mine))
    if not panels and with_dense:    # only dense runs
        for r, s in built:
            panels.append(CurvePanel(r["model"], r["dataset"], 0.0, [s]))
    intervals = [(m, d) for p in panels for s in p.series if not s.collapsed for m, d in zip(s.mean, s.std)]
    lo, hi, _ = _limits(intervals, min_pad=0.0)
    if floor is not None:
        lo = floor
    pad = max(0.05 * (hi - lo), 0.5)
    ylim = (lo if floor is not None else lo - pad, hi + pad)
    return CurveFigure(panels, x_key, key, ylim)


def training_curves_data(runs, key: str, scale: float = 100.0, chance: float | None = None,
                         with_dense: bool = True, floor: float | None = None) -> CurveFigure:
    """:func:`curve_figure_data` of the runs' rows (:func:`group_rows`) and their per-epoch ``key``
    (:func:`dst.report.summarize.curve_rows`): the over-training figure of the finished runs."""
    return curve_figure_data(group_rows(runs), curve_rows(runs, (key,)), key, scale, chance, with_dense, floor)


def training_curves_figure(data: CurveFigure, ylabel: str):
    """Draw :func:`curve_figure_data` (from runs or from ``curves.csv`` alike); returns the figure (not
    saved, not closed)."""
    fig, axes = _grid(len(data.panels), width=4.4, height=3.3)
    several = len({(p.model, p.dataset) for p in data.panels}) > 1
    for ax, panel in zip(axes, data.panels):
        for s in panel.series:
            line, = ax.plot(s.x, s.mean, color=s.colour, lw=1.6 if s.dense else 1.3, ls="--" if s.dense else "-",
                            marker=s.marker or None, markevery=max(1, len(s.x) // 6), ms=4.5, label=s.label,
                            zorder=3 if not s.dense else 2)
            line.set_gid(f"curve:{s.label}")
            ax.fill_between(s.x, [m - d for m, d in zip(s.mean, s.std)], [m + d for m, d in zip(s.mean, s.std)],
                            color=s.colour, alpha=0.15 if not s.dense else 0.1, lw=0)
        below = [s for s in panel.series if s.collapsed and s.mean and s.mean[-1] < data.ylim[0]]
        for k, s in enumerate(below):    # curves that leave through the bottom: say which, and where they end
            ax.annotate(f"{s.label} collapsed: ends at {s.mean[-1]:.1f} (below the axis)", (0.98, 0.03 + 0.07 * k),
                        xycoords="axes fraction", ha="right", va="bottom", fontsize=7, color=s.colour,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": s.colour, "alpha": 0.9})
        title = f"{_sparsity_tick(1 - panel.sparsity)}% sparsity" if panel.sparsity else "dense"
        ax.set_title(f"{panel.model}, {panel.dataset}, {title}" if several else title, fontsize=10)
        ax.set_ylim(*data.ylim)
        ax.set_xlabel(data.xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    fig.tight_layout()
    return fig


def save(fig, path) -> pathlib.Path:
    """Save ``fig`` as a PNG (the legend outside the axes included) and close it."""
    path = pathlib.Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_accuracy_vs_sparsity(rows: list[dict], path, chance: float | None = None) -> pathlib.Path:
    return save(accuracy_vs_sparsity_figure(accuracy_vs_sparsity_data(rows, chance)), path)


def plot_test_accuracy_over_training(rows: list[dict], table: list[dict], path,
                                     chance: float | None = None) -> pathlib.Path:
    """``test_accuracy_over_training.png`` from the report's rows and the curves table (see
    :func:`curve_figure_data`)."""
    data = curve_figure_data(rows, table, "test/accuracy", chance=chance)
    return save(training_curves_figure(data, "test accuracy (%)"), path)


def plot_itop_over_training(rows: list[dict], table: list[dict], path) -> pathlib.Path:
    """``itop_over_training.png`` (sparse settings only, the y axis from 0) from the report's rows and the
    curves table."""
    data = curve_figure_data(rows, table, "itop_rate", with_dense=False, floor=0.0)
    return save(training_curves_figure(data, "ITOP rate (% of weights ever active)"), path)


def plots_from_csv(csv_paths, out_dir=None, dense_from=(), name: str = "accuracy_vs_sparsity.png",
                   chance: float | None = None, curves_from=()) -> list[pathlib.Path]:
    """Redraw what stored tables hold into ``out_dir`` (default: the first CSV's folder): the accuracy
    against sparsity, over the rows of every ``report.csv`` in ``csv_paths`` (one path or several) plus the
    dense rows (:func:`is_dense`) of the ``report.csv`` files in ``dense_from`` (a baseline run in another
    report); and, when ``curves_from`` names ``curves.csv`` files (one path or several, e.g. the ones
    written beside those tables), the two over-training figures (:data:`CURVE_PLOTS`) of those same rows'
    settings, drawn as :func:`dst.report.write_report` draws them from the runs. Returns the written paths.
    Raises :class:`TableError` when a curves file is not one, or holds no curve of the rows' settings."""
    def paths(p):
        return [p] if isinstance(p, str | pathlib.Path) else list(p)
    csv_paths, dense_from, curves_from = paths(csv_paths), paths(dense_from), paths(curves_from)
    out = pathlib.Path(out_dir) if out_dir is not None else pathlib.Path(csv_paths[0]).parent
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for path in csv_paths for r in read_report_csv(path)]
    rows += [r for path in dense_from for r in read_report_csv(path) if is_dense(r)]
    table = [t for path in curves_from for t in read_curves_csv(path)]
    if curves_from:
        shown = {tuple(r[k] for k in GROUP_KEYS) for r in rows}
        if not any(tuple(t[k] for k in GROUP_KEYS) in shown for t in table):
            raise TableError(f"{', '.join(map(str, curves_from))} hold no curve of the settings in "
                             f"{', '.join(map(str, csv_paths + dense_from))}.")
    written = [plot_accuracy_vs_sparsity(rows, out / name, chance)]
    if curves_from:
        written += [plot_test_accuracy_over_training(rows, table, out / CURVE_PLOTS[0], chance),
                    plot_itop_over_training(rows, table, out / CURVE_PLOTS[1])]
    return written
