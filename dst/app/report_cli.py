"""``dst-report PATH... [--out DIR]``: compare every run below the given folders.

Writes ``report.md``, ``report.csv``, ``curves.csv`` and PNG plots (into ``--out``, default the first
PATH): mean ± std over seeds per algorithm × sparsity × distribution × model × data set, split further by
any other config value that differs among those runs (see :mod:`dst.report.summarize`), and a table by
sparsity; ``curves.csv`` holds the per-epoch mean, std and run count of test accuracy and ITOP rate per
setting (:func:`dst.report.write.write_curves_csv`). Failed, preempted, unfinished and unreadable runs are
listed by name with their status, never averaged in.

``dst-report --from-csv REPORT.csv... [--dense-from OTHER.csv...] [--curves-from CURVES.csv...]
[--out DIR]`` redraws, from stored tables alone, what they hold: ``accuracy_vs_sparsity.png``, and with
``--curves-from`` also ``test_accuracy_over_training.png`` and ``itop_over_training.png`` for the settings
of those report rows. ``--dense-from`` adds the dense baseline rows of other tables (give their
``curves.csv`` to ``--curves-from`` too for the dense curve).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from dst.report import collect_runs
from dst.report import write_report
from dst.report.figures import TableError
from dst.report.figures import plots_from_csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dst-report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help="folders holding run directories (a sweep, outputs/, ...)")
    parser.add_argument("--out", help="where to write the report (default: the first PATH or CSV's folder)")
    parser.add_argument("--from-csv", nargs="+", metavar="CSV",
                        help="redraw accuracy_vs_sparsity.png (with --curves-from, the over-training plots "
                             "too) from stored report.csv files instead of runs")
    parser.add_argument("--dense-from", nargs="+", metavar="CSV", default=[],
                        help="with --from-csv: also draw the dense baseline rows of these report.csv files")
    parser.add_argument("--curves-from", nargs="+", metavar="CSV", default=[],
                        help="with --from-csv: also redraw test_accuracy_over_training.png and "
                             "itop_over_training.png from these curves.csv files (written by dst-report "
                             "beside report.csv; not picked up unless named here)")
    args = parser.parse_args(argv)
    if args.from_csv or args.dense_from or args.curves_from:
        return from_csv(args, parser)
    if not args.paths:
        parser.error("give folders that hold run directories, or --from-csv REPORT.csv")
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
    print(f"report: {out}\ntable:  {out.with_suffix('.csv')}\ncurves: {out.parent / 'curves.csv'}")
    return 0


def from_csv(args, parser) -> int:
    if args.paths or not args.from_csv:
        parser.error("--from-csv takes report.csv files and no run folders; --dense-from and --curves-from "
                     "need --from-csv")
    missing = [p for p in (*args.from_csv, *args.dense_from, *args.curves_from) if not pathlib.Path(p).is_file()]
    if missing:
        print(f"error: {missing[0]} is not a file; --from-csv and --dense-from take report.csv files, "
              f"--curves-from curves.csv files.", file=sys.stderr)
        return 2
    try:
        written = plots_from_csv(args.from_csv, args.out, dense_from=args.dense_from, curves_from=args.curves_from)
    except TableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as err:
        print(f"error: {args.from_csv[0]} is not a dst-report table ({type(err).__name__}: {err}).", file=sys.stderr)
        return 2
    for path in written:
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
