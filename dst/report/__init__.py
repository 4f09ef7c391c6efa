"""Compare runs: read run directories, aggregate over seeds, write ``report.md``, ``report.csv``,
``curves.csv`` and plots (redrawn from the stored tables by :func:`plots_from_csv`)."""

from dst.report.collect import RunInfo
from dst.report.collect import collect_runs
from dst.report.figures import accuracy_vs_sparsity_data
from dst.report.figures import curve_figure_data
from dst.report.figures import plots_from_csv
from dst.report.figures import read_curves_csv
from dst.report.figures import read_report_csv
from dst.report.figures import training_curves_data
from dst.report.summarize import GROUP_KEYS
from dst.report.summarize import curve_rows
from dst.report.summarize import group_rows
from dst.report.write import write_report

__all__ = [
    "GROUP_KEYS",
    "RunInfo",
    "accuracy_vs_sparsity_data",
    "collect_runs",
    "curve_figure_data",
    "curve_rows",
    "group_rows",
    "plots_from_csv",
    "read_curves_csv",
    "read_report_csv",
    "training_curves_data",
    "write_report",
]
