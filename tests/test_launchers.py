"""Every Hydra launcher dst documents runs a real two-job sweep that ends in the report.

Each starts processes (or a Ray instance) of its own: 15-30 s apiece, so they run with `make test-slow`
(which .ci/run runs after `make test`). The basic launcher is tested in the fast suite (test_cli, test_report).
"""

import json
import pathlib
import signal
import subprocess
import sys
import time

import psutil
import pytest
from cli_helpers import ENV
from cli_helpers import dst_train
from idx_data import write_dataset

BIN = pathlib.Path(sys.executable).parent
pytestmark = pytest.mark.slow
RAY_PORT = 6391


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist")


def sweep(tmp_path, data_dir, *launcher):
    sweep_dir = tmp_path / "sweep"
    out = dst_train("-m", *launcher, "sparsity=static,rigl", f"dataset.data_dir={data_dir}", "trainer.epochs=1",
                    "trainer.batch_size=64", "logger=none", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=900)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert len(runs) == 2
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "finished", run
    report = (sweep_dir / "report.md").read_text()
    assert "| static |" in report and "| rigl |" in report
    return out


def test_joblib_runs_jobs_in_parallel_processes(tmp_path, data_dir):
    sweep(tmp_path, data_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")


def test_submitit_local_runs_jobs_through_submitit(tmp_path, data_dir):
    sweep(tmp_path, data_dir, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=15")
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))


def test_ray_runs_jobs_on_a_local_ray_instance(tmp_path, data_dir):
    ray = str(BIN / "ray")
    # The test's own Ray instance, on the loopback interface only.
    start = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={RAY_PORT}",
                            "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        # The launcher asks for a local object store by default; an existing instance has its own.
        sweep(tmp_path, data_dir, "hydra/launcher=ray", f"+hydra.launcher.ray.init.address=127.0.0.1:{RAY_PORT}",
              "+hydra.launcher.ray.init.object_store_memory=null")
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=ENV, timeout=300)


def test_a_preempted_submitit_job_is_requeued_and_resumes(tmp_path, tmp_path_factory):
    # submitit signals a job it is about to preempt or time out with USR2; the launcher is
    # checkpointable, so submitit requeues the same job (same overrides, same directory), and dst
    # resumes it from its latest checkpoint: the job ends with an uninterrupted run's records.
    data = write_dataset(tmp_path_factory.mktemp("big") / "fashion_mnist", n_train=6400)
    # LeNet-300-100 (a tenth of set_mlp's weights) over 12 epochs: USR2 lands with most of the job to go.
    base = ["model=lenet300", "trainer.epochs=12", "trainer.batch_size=64", "logger=none", f"dataset.data_dir={data}"]
    whole = tmp_path / "whole"
    assert dst_train(*base, f"hydra.run.dir={whole}", cwd=tmp_path).returncode == 0
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "dst.train", "-m", "hydra/launcher=submitit_local",
                             "hydra.launcher.timeout_min=15", *base, "trainer.seed=0", f"hydra.sweep.dir={sweep_dir}"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = sweep_dir / "0_rigl_lenet300_fashion_mnist_s0"
    deadline = time.monotonic() + 600
    while not (job / "checkpoints" / "2").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    # The job's task process (`-m submitit.core._submit`), not submitit's local controller.
    tasks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "submitit.core._submit" in p.cmdline()]
    assert tasks, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]
    for task in tasks:
        task.send_signal(signal.SIGUSR2)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    logs = " ".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.*"))
    assert "Requeued" in logs or "requeue" in logs.lower(), logs[-3000:]
    assert "resuming from" in logs
    strip = lambda d: [{k: v for k, v in json.loads(line).items() if k not in ("wall_time", "time/elapsed",
                                                                              "steps_per_sec", "run_dir")}
                       for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert strip(job) == strip(whole)
