"""Compare runs: read run directories, aggregate over seeds, write ``report.md``, ``report.csv`` and plots."""

from dst.report.collect import RunInfo
from dst.report.collect import collect_runs
from dst.report.summarize import GROUP_KEYS
from dst.report.summarize import group_rows
from dst.report.write import write_report

__all__ = [
    "GROUP_KEYS",
    "RunInfo",
    "collect_runs",
    "group_rows",
    "write_report",
]
