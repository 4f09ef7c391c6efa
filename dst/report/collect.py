"""Find run directories below some folders and read what each run wrote.

A run directory holds ``.hydra/config.yaml`` (or ``config.yaml``) and ``metrics.jsonl`` and/or
``summary.json``. A run without ``summary.json`` is ``unfinished`` (still running, or killed); one
whose summary says ``failed`` or ``preempted`` keeps that status and its error. A file that cannot be
parsed makes its run ``unreadable``, with the reason; the other runs are read as usual.
"""

from __future__ import annotations

import json
import pathlib
from typing import NamedTuple

import yaml

CONFIG_FILES = (".hydra/config.yaml", "config.yaml")


class RunInfo(NamedTuple):
    path: pathlib.Path
    status: str                  # finished | failed | preempted | unfinished | unreadable
    config: dict
    summary: dict
    records: list
    error: str = ""


def _config_file(folder: pathlib.Path) -> pathlib.Path | None:
    for name in CONFIG_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def run_dirs(paths) -> list[pathlib.Path]:
    """Every run directory at or below ``paths``, sorted by path."""
    found = set()
    for root in map(pathlib.Path, paths):
        candidates = [root, *root.rglob("*")] if root.is_dir() else []
        for folder in candidates:
            if folder.is_dir() and _config_file(folder) and (
                    (folder / "metrics.jsonl").exists() or (folder / "summary.json").exists()):
                found.add(folder)
    return sorted(found)


def read_run(folder: pathlib.Path) -> RunInfo:
    try:
        config = yaml.safe_load(_config_file(folder).read_text()) or {}
        records = []
        if (folder / "metrics.jsonl").exists():
            records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
    except (OSError, ValueError, yaml.YAMLError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return RunInfo(folder, "unreadable", {}, {}, [], reason)
    status = summary.get("status", "unfinished") if summary else "unfinished"
    return RunInfo(folder, status, config, summary, records, str(summary.get("error", "")))


def collect_runs(paths) -> list[RunInfo]:
    """Read every run below ``paths`` (see the module docstring for the statuses)."""
    return [read_run(folder) for folder in run_dirs(paths)]
