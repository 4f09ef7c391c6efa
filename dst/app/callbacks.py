"""Hydra callbacks: the report that ends every sweep."""

from __future__ import annotations

import pathlib

from hydra.experimental.callback import Callback

from dst.report import collect_runs
from dst.report import write_report


class SweepReport(Callback):
    """After a multirun, write the ``dst-report`` of the sweep directory (``report.md``, ``report.csv``,
    plots) and print its table; failed and unfinished jobs are listed by name."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = pathlib.Path(config.hydra.sweep.dir)
        runs = collect_runs([sweep_dir])
        if not runs:
            print(f"\nsweep: no run directories below {sweep_dir}; no report written.", flush=True)
            return
        path, _ = write_report(runs, sweep_dir, root=sweep_dir)
        failed = [r for r in runs if r.status != "finished"]
        print(f"\nsweep report ({path}):\n{path.read_text()}", flush=True)
        if failed:
            print(f"sweep: {len(failed)} of {len(runs)} jobs did not finish: "
                  + ", ".join(f"{r.path.name} ({r.status})" for r in failed), flush=True)


