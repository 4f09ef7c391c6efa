"""One training epoch end to end through ``dst-train``, per storage backend: wall time, steps/s, accuracy.

The issue's end-to-end check: one CIFAR-10 WRN-22-2 epoch at 95% on ``sparsity.backend=auto`` against
``masked``. Each backend is one ``dst-train`` process (start-up, data loading, compilation, ``auto``'s
timings, the epoch and its evaluation all counted in ``wall_time``; ``steps_per_sec`` is the epoch's own
rate from its record), run one after the other so they never share the cores.

``--data-dir`` points at the real CIFAR-10 (the folder holding ``cifar-10-batches-py/``). Without it the
script writes a stand-in of CIFAR-10's shape and format (50,000 + 10,000 32x32x3 uint8 images in the
official python batches, noise plus a label-coded band) to a temporary folder: the wall time of a step does
not depend on the pixels, the accuracy does (it is not CIFAR-10's).

Run: ``.venv/bin/python benchmarks/epoch_wall_time.py [--data-dir DIR] [--sparsity 0.95]
[--backends masked,auto] [--isa avx2] [-- extra dst-train overrides]``
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import pickle
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))


def write_standin(folder: pathlib.Path, per_file: int = 10_000, seed: int = 0) -> pathlib.Path:
    """CIFAR-10's five training batches and test batch, of CIFAR's size, in its format, under ``folder``."""
    rng = np.random.default_rng(seed)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    for name in (*TRAIN_FILES, "test_batch"):
        labels = rng.integers(0, 10, per_file)
        images = rng.integers(0, 80, (per_file, 3, 32, 32), dtype=np.uint8)   # rows: R, G, B planes
        rows = 2 + 3 * labels                                                  # the label is a bright band
        images[np.arange(per_file), labels % 3, rows] = 220
        with open(batches / name, "wb") as f:
            pickle.dump({b"data": images.reshape(per_file, 3072), b"labels": labels.tolist()}, f, protocol=2)
    return folder


def run_one(backend: str, args, data_dir: pathlib.Path, out: pathlib.Path, extra: list[str]) -> dict:
    run_dir = out / backend
    command = [str(pathlib.Path(sys.executable).parent / "dst-train"), f"experiment={args.experiment}",
               "trainer.epochs=1", f"sparsity.sparsity={args.sparsity}", f"sparsity.backend={backend}",
               f"dataset.data_dir={data_dir}", "logger.name=none", f"hydra.run.dir={run_dir}", *extra]
    env = dict(os.environ, **({"DST_KERNELS_ISA": args.isa} if args.isa else {}))
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    seconds = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    stored = len(json.loads(summary.get("stored_layers", "{}")))
    return {"backend": backend, "process_s": seconds, "wall_time": summary["wall_time"],
            "steps_per_sec": summary.get("steps_per_sec", float("nan")),
            "test_accuracy": summary.get("test/accuracy", float("nan")), "stored": stored}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="the folder holding cifar-10-batches-py/ (default: write a CIFAR-shaped stand-in)")
    parser.add_argument("--experiment", default="rigl_wrn22_cifar10")
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--backends", default="masked,auto")
    parser.add_argument("--isa", default=None, help="DST_KERNELS_ISA for the runs (e.g. avx2); default: the CPU's best")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="where the runs write (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="more dst-train overrides, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dst_epoch_") as scratch:
        scratch = pathlib.Path(scratch)
        data_dir = args.data_dir or write_standin(scratch / "data")
        out = args.out or scratch / "runs"
        print(f"{platform.machine()}, {os.cpu_count()} cores, ISA {args.isa or 'best'}, data "
              f"{'CIFAR-10 at ' + str(data_dir) if args.data_dir else 'CIFAR-shaped stand-in'}", flush=True)
        rows = [run_one(backend, args, data_dir, out, args.extra) for backend in args.backends.split(",")]
    base = rows[0]
    print(f"\n| backend | stored layers | wall time (s) | epoch steps/s | {base['backend']} / backend (wall) | "
          f"test accuracy |\n| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['backend']} | {row['stored']} | {row['wall_time']:.0f} | {row['steps_per_sec']:.3f} | "
              f"{base['wall_time'] / row['wall_time']:.2f} | {row['test_accuracy']:.4f} |")


if __name__ == "__main__":
    main()
