"""Checkpoints and resume with the real CLI: a run killed with SIGKILL, or stopped by SIGTERM, and
resumed ends with the outputs of an uninterrupted run; checkpoints of other runs are refused."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from cli_helpers import ENV
from cli_helpers import dst_train
from hydra import compose
from hydra import initialize_config_dir
from idx_data import write_dataset
from omegaconf import OmegaConf

from dst.app.run import run
from dst.app.validate import ConfigError

# One worker runs this file, so its module fixtures (real runs) run once under `make test`.
pytestmark = pytest.mark.xdist_group("resume_runs")

CONF = pathlib.Path(__file__).resolve().parents[1] / "conf"
QUIET = open(os.devnull, "w")
# Wall-clock fields differ between any two runs; run_dir names the directory.
CLOCK = ("wall_time", "time/elapsed", "steps_per_sec", "run_dir")
BASE = ["model=set_mlp", "trainer.batch_size=64", "trainer.epochs=7", "trainer.log_every_epochs=2",
        "logger=none", "sparsity.update_every=40"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist", n_train=6400)


def outputs(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    strip = lambda r: {k: v for k, v in r.items() if k not in CLOCK}
    return [strip(r) for r in records], strip(summary)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    out = dst_train(*BASE, f"dataset.data_dir={data_dir}", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return outputs(run_dir)


def start(run_dir, data_dir, *extra):
    return subprocess.Popen([sys.executable, "-m", "dst.train", *BASE, f"dataset.data_dir={data_dir}",
                             f"hydra.run.dir={run_dir}", *extra], cwd=run_dir.parent, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.slow   # a real multi-process run (20-45 s): `make test-slow`, which .ci/run runs too
def test_a_run_killed_mid_interval_resumes_to_the_uninterrupted_outputs(tmp_path, data_dir, uninterrupted):
    run_dir = tmp_path / "run"
    proc = start(run_dir, data_dir)
    # Checkpoint 3 falls inside a logging interval (records at epochs 2, 4, 6, 7): the resumed run
    # must carry epoch 3's per-step metrics into the record of epoch 4.
    wait_for(lambda: (run_dir / "checkpoints" / "3").is_dir(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists()
    out = dst_train(*BASE, f"dataset.data_dir={data_dir}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from" in out.stdout and "epoch 3" in out.stdout
    assert outputs(run_dir) == uninterrupted
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["6", "7"]   # keep_checkpoints=2


@pytest.mark.slow
def test_sigterm_checkpoints_then_the_same_command_resumes(tmp_path, data_dir, uninterrupted):
    run_dir = tmp_path / "run"
    proc = start(run_dir, data_dir, "trainer.checkpoint_every_epochs=0", "trainer.log_every_epochs=1")
    wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").read_text().count("\n"),
             proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-2000:]
    assert "preempted: stopped by SIGTERM after epoch" in stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "preempted"
    saved = [p.name for p in (run_dir / "checkpoints").iterdir()]
    assert len(saved) == 1 and int(saved[0]) < 7
    out = dst_train(*BASE, f"dataset.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
                    "trainer.checkpoint_every_epochs=0", "trainer.log_every_epochs=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    records, summary = outputs(run_dir)
    whole_records, whole_summary = uninterrupted
    # Logged every epoch here, every two epochs there: the records of the epochs both logged agree.
    assert [r for r in records if r["epoch"] in (2, 4, 6, 7)][-1] == whole_records[-1]
    assert summary["status"] == "finished" and summary["test/accuracy"] == whole_summary["test/accuracy"]


def _files(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("small") / "fashion_mnist")


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


# One case in `make test`, the other fields in `make test-slow` (each is two short training runs).
@pytest.mark.parametrize("change, mismatch", [
    ("sparsity.sparsity=0.8", "sparsity.sparsity=0.9, not 0.8"),
    pytest.param("sparsity.backend=csr", "sparsity.backend='masked', not 'csr'", marks=pytest.mark.slow),
    pytest.param("sparsity=set", "sparsity.algorithm='rigl', not 'set'", marks=pytest.mark.slow),
    pytest.param("model=set_mlp", "model=", marks=pytest.mark.slow),
    pytest.param("dataset.name=mnist", "dataset.name='fashion_mnist', not 'mnist'", marks=pytest.mark.slow),
])
def test_a_checkpoint_of_other_settings_is_refused_and_kept(tmp_path, small_data, change, mismatch):
    # A narrow MLP (where the model itself is not the change): the check is of the settings, and its small
    # layers compile in less time.
    first = ["trainer.epochs=1", "logger=none", f"dataset.data_dir={small_data}"]
    first += [] if change.startswith("model=") else ["model=mlp", "model.hidden=[20,12]"]
    run(composed(*first), tmp_path, stream=QUIET)
    before = _files(tmp_path / "checkpoints")
    with pytest.raises(ConfigError) as err:
        run(composed(*first, change), tmp_path, stream=QUIET)
    assert str(tmp_path / "checkpoints" / "1") in str(err.value) and mismatch in str(err.value)
    assert _files(tmp_path / "checkpoints") == before
    summary = run(composed(*first, change, "trainer.resume=false"), tmp_path, stream=QUIET)
    assert summary["status"] == "finished"


@pytest.mark.slow   # two real dst-train processes (20-50 s)
def test_a_corrupt_checkpoint_is_named_and_kept_and_the_cli_exits_2(tmp_path, small_data):
    run_dir = tmp_path / "run"
    first = ["trainer.epochs=2", "logger=none", f"dataset.data_dir={small_data}", f"hydra.run.dir={run_dir}"]
    assert dst_train(*first, cwd=tmp_path).returncode == 0
    (run_dir / "checkpoints" / "2" / "meta" / "metadata").write_text("{ not json")
    before = _files(run_dir)
    out = dst_train(*first, cwd=tmp_path)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "checkpoints/2 cannot be read" in lines[0], out.stderr
    assert _files(run_dir) == before                  # checkpoints, metrics and summary untouched
