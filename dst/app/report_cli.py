"""``dst-report PATH... [--out DIR]``: compare every run below the given folders.

Writes ``report.md``, ``report.csv`` and PNG plots (into ``--out``, default the first PATH): mean ± std
over seeds per algorithm × sparsity × distribution × model × data set, split further by any other config
value that differs among those runs (see :mod:`dst.report.summarize`), and a table by sparsity; failed,
preempted, unfinished and unreadable runs are listed by name with their status, never averaged in.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from dst.report import collect_runs
from dst.report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dst-report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="folders holding run directories (a sweep, outputs/, ...)")
    parser.add_argument("--out", help="where to write the report (default: the first PATH)")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not pathlib.Path(p).is_dir()]
    if missing:
        print(f"error: {missing[0]} is not a folder; dst-report takes folders that hold run directories.",
              file=sys.stderr)
        return 2
    runs = collect_runs(args.paths)
    if not runs:
        print(f"error: no runs below {', '.join(args.paths)} (a run directory holds .hydra/config.yaml and "
              f"metrics.jsonl or summary.json).", file=sys.stderr)
        return 1
    unreadable = [r for r in runs if r.status == "unreadable"]
    for r in unreadable:
        print(f"warning: {r.path} could not be read ({r.error}); it is listed in the report, not averaged.",
              file=sys.stderr)
    out, rows = write_report(runs, args.out or args.paths[0], root=args.paths)
    for r in rows:
        if len(set(r["seeds"])) < len(r["seeds"]):
            print(f"warning: {r['algorithm']} {r['sparsity']} {r['settings']} averages runs with repeated seeds "
                  f"({' '.join(map(str, r['seeds']))}); see report.md.", file=sys.stderr)
    print(out.read_text())
    print(f"report: {out}\ntable:  {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
