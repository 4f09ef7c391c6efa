"""A PNG of a run's curves: test accuracy, density (global and per layer), ITOP rate, drop fraction."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

MAX_LEGEND_LAYERS = 10     # matplotlib's colour cycle: more would repeat colours


def plot_curves(records: list[dict], path, title: str = "") -> pathlib.Path:
    """Draw the four panels from ``metrics.jsonl`` records (x axis: step) and save them to ``path``."""
    path = pathlib.Path(path)
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    ax.plot(steps, [r["test/accuracy"] for r in records], marker="o", label="test")
    ax.plot(steps, [r["train/accuracy"] for r in records], marker=".", label="train")
    ax.set_title("accuracy")
    ax.legend()
    ax = axes[0, 1]
    ax.plot(steps, [1 - r["sparsity/global"] for r in records], lw=3, color="k", label="global", zorder=3)
    layers = sorted(k for k in records[0] if k.startswith("sparsity/") and k != "sparsity/global")
    # A legend entry per layer only while it fits (ResNet-50 has 53 sparse layers): beyond that the
    # layers are thin grey lines under one entry.
    named = len(layers) <= MAX_LEGEND_LAYERS
    for i, key in enumerate(layers):
        if named:
            ax.plot(steps, [1 - r[key] for r in records], label=key.removeprefix("sparsity/"))
        else:
            ax.plot(steps, [1 - r[key] for r in records], lw=0.6, color="0.6",
                    label=f"{len(layers)} layers" if i == 0 else None)
    ax.set_title("density (active / size)")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    ax.plot(steps, [r.get("itop_rate", float("nan")) for r in records], marker="o")   # nan: not tracked
    ax.set_title("ITOP rate (ever active / size)")
    ax = axes[1, 1]
    ax.plot(steps, [r["drop_fraction"] for r in records], marker="o")
    ax.set_title("drop fraction f(t)")
    for a in axes.flat:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
