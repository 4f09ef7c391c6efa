"""Hydra callbacks: the table that ends every sweep."""

from __future__ import annotations

import json
import pathlib

from hydra.experimental.callback import Callback

COLUMNS = ("test/accuracy", "best/test_accuracy", "sparsity/global", "itop_rate", "flops/train_relative")


def sweep_table(sweep_dir) -> str:
    """A markdown table of every run's final metrics under ``sweep_dir`` (one row per summary.json)."""
    def job_order(path):  # Hydra names job dirs "<num>_<name>": order by the number, not as text
        head = path.parent.name.split("_", 1)[0]
        return (int(head), "") if head.isdigit() else (1 << 30, path.parent.name)

    rows = [(p.parent.name, json.loads(p.read_text()))
            for p in sorted(pathlib.Path(sweep_dir).glob("*/summary.json"), key=job_order)]
    header = "| run | status | " + " | ".join(COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (len(COLUMNS) + 2)]
    for name, summary in rows:
        cells = [_fmt(summary.get(c)) for c in COLUMNS]
        lines.append(f"| {name} | {summary.get('status', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


class SweepTable(Callback):
    """After a multirun, write ``summary.md`` (markdown table of the runs) into the sweep directory."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = pathlib.Path(config.hydra.sweep.dir)
        table = sweep_table(sweep_dir)
        (sweep_dir / "summary.md").write_text(table)
        print(f"\nsweep summary ({sweep_dir / 'summary.md'}):\n{table}", flush=True)
