"""The real CLI end to end on IDX data written by the test: every output file and key."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
import yaml
from cli_helpers import dst_train
from cli_helpers import dst_train_here
from idx_data import write_dataset

import dst
from dst.masks import active_count
from dst.models import MLP

# One worker runs this file, so its module fixtures (real runs) run once under `make test`.
pytestmark = pytest.mark.xdist_group("cli_run")

REQUIRED = ("step", "epoch", "train/loss", "train/accuracy", "test/loss", "test/accuracy", "sparsity/global",
            "itop_rate", "drop_fraction", "topology/updates", "topology/dropped", "topology/grown",
            "flops/train_relative", "steps_per_sec", "dead_units/total", "dead_units/Dense_0/kernel")
LAYERS = ("Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel")
# The runs train a narrow MLP: the same program as LeNet-300-100's, with layers small enough that a mask
# update's selection compiles as the small program (dst.selection), so a run takes seconds less to start.
HIDDEN = (20, 12)
MODEL = ("model=mlp", f"model.hidden=[{HIDDEN[0]},{HIDDEN[1]}]")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist")


@pytest.fixture(scope="session")
def rigl_run(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("run") / "rigl"
    out = dst_train("sparsity=rigl", "sparsity.sparsity=0.9", *MODEL, "dataset=fashion_mnist",
                    f"dataset.data_dir={data_dir}", "trainer.epochs=3", "trainer.batch_size=64",
                    "sparsity.update_every=4", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, out


def test_run_directory_holds_every_output(rigl_run):
    run_dir, out = rigl_run
    for name in (".hydra/config.yaml", "metrics.jsonl", "summary.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    config = yaml.safe_load((run_dir / ".hydra/config.yaml").read_text())
    assert config["sparsity"]["algorithm"] == "rigl" and config["trainer"]["epochs"] == 3
    assert "metrics.jsonl" in out.stdout and "curves.png" in out.stdout and "epoch 3/3" in out.stdout


def test_metrics_have_every_key_and_densities_stay_on_target(rigl_run):
    run_dir, _ = rigl_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    params = MLP(hidden=HIDDEN).init(jax.random.key(0), jnp.zeros((1, 28, 28)))["params"]
    densities = dst.layer_densities(params, 0.9, "erk")
    sizes = {n: x.size for n, x in dst.masks.named_leaves(params).items()}
    for r in records:
        for key in REQUIRED + tuple(f"sparsity/{n}" for n in LAYERS):
            assert key in r, key
        for n in LAYERS:
            expected = 1 - active_count(densities[n], sizes[n]) / sizes[n]
            assert r[f"sparsity/{n}"] == pytest.approx(expected, abs=1e-12)
        assert r["sparsity/global"] == pytest.approx(0.9, abs=3 / sum(sizes[n] for n in LAYERS))
        assert r["topology/dropped"] == r["topology/grown"]
        assert all(0 <= r[f"activations/zero_fraction/{n}"] <= 1 for n in LAYERS)   # activation sparsity, test set
        assert not any(k.startswith("test/zero_fraction") for k in r)
        if r["topology/updates"]:
            assert r["topology/grown_per_update"] == r["topology/grown"] / r["topology/updates"]
    assert records[0]["topology/updates"] > 0 and records[0]["topology/grown"] > 0
    assert records[-1]["itop_rate"] > 0.1                # regrowth explored new weights
    assert 0.1 < records[-1]["flops/train_relative"] < 0.2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["test/accuracy"] == records[-1]["test/accuracy"]
    assert summary["test/accuracy"] > 0.5                 # the band data set is learnable


def test_wandb_offline_run_is_readable_by_wandbs_own_reader(rigl_run):
    run_dir, _ = rigl_run
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    wandb_cli = pathlib.Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", str(files[0])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for key in ("sparsity/global", "sparsity/Dense_0/kernel", "itop_rate", "test/accuracy", "drop_fraction"):
        assert key in out.stdout, key
    assert "finished" in out.stdout
    records = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(files[0])],
                             capture_output=True, text=True, timeout=120).stdout
    for tag in ("algorithm=rigl", "sparsity=0.9", "distribution=erk", "model=mlp", "dataset=fashion_mnist",
                "seed=0"):
        assert f'"{tag}"' in records, tag
    table = json.loads(next((run_dir / "wandb").glob("offline-run-*/files/media/table/final/densities*.json"))
                       .read_text())
    assert table["columns"] == ["layer", "density"] and [r[0] for r in table["data"]] == list(LAYERS)


def test_console_script_is_installed():
    assert (pathlib.Path(sys.executable).parent / "dst-train").is_file()


@pytest.mark.parametrize("override, sentence", [
    ("sparsity.sparsity=1.0", "sparsity.sparsity must be a number in [0.0, 1.0); got 1.0."),
    ("sparsity.sparsity=-0.5", "sparsity.sparsity must be a number in [0.0, 1.0); got -0.5."),
    ("sparsity.algorithm=rigel", "sparsity.algorithm must be one of dense, "),
    ("sparsity.update_every=0", "sparsity.update_every must be a positive integer; got 0."),
    ("dataset.data_dir=/nonexistent/dst-data", "dataset.data_dir='/nonexistent/dst-data' does not hold"),
    ("optimizer.name=rmsprop", "optimizer.name must be one of sgd, adam, adamw; got 'rmsprop'."),
    ("logger.mode=cloud", "logger.mode must be one of offline, online, disabled; got 'cloud'."),
])
def test_bad_input_exits_nonzero_with_one_sentence_and_keeps_old_outputs(tmp_path, data_dir, override,
                                                                        sentence):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    overrides = [f"dataset.data_dir={data_dir}", override] if "data_dir" not in override else [override]
    out = dst_train_here(*overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and sentence in lines[0], out.stderr
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not (run_dir / "summary.json").exists() and "Traceback" not in out.stderr


def test_a_bad_setting_is_the_exit_status_2_of_the_real_process(tmp_path, data_dir):
    # The cases above run the program in the test's process; this one is the console program itself.
    out = dst_train(f"dataset.data_dir={data_dir}", "sparsity.sparsity=1.0", f"hydra.run.dir={tmp_path / 'run'}",
                    cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == (
        "error: sparsity.sparsity must be a number in [0.0, 1.0); got 1.0."), out.stderr


def test_non_finite_loss_fails_fast_and_keeps_what_was_logged(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    out = dst_train(*MODEL, f"dataset.data_dir={data_dir}", "optimizer.lr=1e30", "optimizer.schedule=constant",
                    "trainer.epochs=3", "logger=none", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert out.returncode != 0
    assert "train/loss became" in out.stderr and "optimizer.lr" in out.stderr
    records = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 1 and json.loads(records[0])["epoch"] == 1
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow   # six real jobs (40-70 s): `make test-slow`, which .ci/run runs too
def test_quick_sweep_runs_end_to_end_and_ends_with_a_table(tmp_path, data_dir):
    sweep_dir = tmp_path / "sweep"
    out = dst_train("+sweep=compare_quick", f"dataset.data_dir={data_dir}", "trainer.batch_size=64",
                    "logger=none", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert len(runs) == 6
    for run in runs:
        for name in (".hydra/config.yaml", "metrics.jsonl", "summary.json", "curves.png"):
            assert (run / name).is_file(), f"{run.name}/{name}"
    configs = [yaml.safe_load((r / ".hydra/config.yaml").read_text()) for r in runs]
    assert sorted((c["sparsity"]["algorithm"], c["trainer"]["seed"]) for c in configs) == [
        ("rigl", 0), ("rigl", 1), ("set", 0), ("set", 1), ("static", 0), ("static", 1)]
    table = [line for line in (sweep_dir / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert table[0].startswith("| algorithm | sparsity |")
    assert sorted(row.split(" | ")[0].strip("| ") for row in table[2:]) == ["rigl", "set", "static"]
    assert all(row.rstrip(" |").endswith("| 2") for row in table[2:])   # two seeds each
    assert "every run finished" in (sweep_dir / "report.md").read_text()
