"""The sweep files: their grids compose as documented, and density_curve and optuna_rigl run for real
(shrunk), ending in a report (and Optuna's best value being the best run's objective)."""

import json
import pathlib
import subprocess
import sys

import pytest
import yaml
from cli_helpers import dst_train
from hydra import compose
from hydra import initialize_config_dir
from idx_data import write_dataset

CONF = pathlib.Path(__file__).resolve().parents[1] / "conf"
BIN = pathlib.Path(sys.executable).parent


def sweeper_params(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    return {k: str(v) for k, v in cfg.hydra.sweeper.params.items()}


def test_compare_algorithms_sweeps_algorithm_sparsity_distribution_and_seed():
    params = sweeper_params("compare_algorithms")
    assert set(params) == {"sparsity", "sparsity.sparsity", "sparsity.distribution", "trainer.seed"}
    assert "rigl" in params["sparsity"] and "set" in params["sparsity"] and "static" in params["sparsity"]
    assert params["sparsity.distribution"] == "uniform,erk" and len(params["trainer.seed"].split(",")) == 3


def test_density_curve_spans_fifty_to_ninety_nine_percent():
    values = [float(v) for v in sweeper_params("density_curve")["sparsity.sparsity"].split(",")]
    assert min(values) == 0.5 and max(values) == 0.99 and values == sorted(values)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist")


@pytest.mark.slow   # a real multi-process run (20-45 s): `make test-slow`, which .ci/run runs too
def test_density_curve_runs_and_reports_accuracy_against_sparsity(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    # Command-line values replace the file's axes (a shrunk curve: two sparsities, one seed).
    out = dst_train("+sweep=density_curve", "sparsity.sparsity=0.5,0.99", "trainer.seed=0",
                    f"dataset.data_dir={data_dir}", "trainer.epochs=1",
                    "trainer.batch_size=64", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # The runs of one sweep share a wandb group; tags say what each run is.
    for run in (p for p in sweep.iterdir() if (p / "wandb").is_dir()):
        log = next((run / "wandb").glob("offline-run-*/run-*.wandb"))
        records = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--json", str(log)],
                                 capture_output=True, text=True, timeout=120).stdout
        assert f'"group":"{sweep}"' in records and '"algorithm=rigl"' in records and '"seed=0"' in records
    report = (sweep / "report.md").read_text()
    assert "| rigl | 0.5 | erk |" in report and "| rigl | 0.99 | erk |" in report
    assert (sweep / "accuracy_vs_sparsity.png").is_file()


@pytest.mark.slow
def test_optuna_rigl_maximises_the_validation_accuracy(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    out = dst_train("+sweep=optuna_rigl", "hydra.sweeper.n_trials=3", f"dataset.data_dir={data_dir}",
                    "trainer.epochs=1", "trainer.batch_size=64", "logger=none", f"hydra.sweep.dir={sweep}",
                    cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("objective: val/accuracy = ") == 3
    runs = [p for p in sweep.iterdir() if (p / "summary.json").is_file()]
    values = [json.loads((p / "summary.json").read_text())["val/accuracy"] for p in runs]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert len(runs) == 3 and best["best_value"] == pytest.approx(max(values))
    assert set(best["best_params"]) == {"optimizer.lr", "sparsity.drop_fraction", "sparsity.update_every"}
    assert (sweep / "report.md").is_file()


def test_grids_sweeper_is_the_union_of_its_grids_in_order():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dst.app.grids import grid_jobs

    parse = OverridesParser.create().parse_overrides
    grids = [{"sparsity": "dense"}, {"sparsity": "set,rigl", "sparsity.sparsity": "0.9,0.95"}]
    jobs = grid_jobs(grids, ["trainer.epochs=3", "trainer.seed=0,1"], parse)
    cells = [tuple(sorted(j)) for j in jobs]
    assert len(cells) == len(set(cells)) == 2 + 8          # dense x 2 seeds, then 2 x 2 x 2
    assert all("trainer.epochs=3" in j for j in jobs)
    assert [j for j in jobs if "sparsity=dense" in j] == jobs[:2]
    assert not any(o.startswith("sparsity.sparsity") for j in jobs[:2] for o in j)
    assert {("sparsity=rigl", "sparsity.sparsity=0.95")} <= {tuple(o for o in j if o.startswith("sparsity"))
                                                              for j in jobs}
    # A command-line axis replaces the grid's axis of the same key.
    narrowed = grid_jobs(grids[1:], ["sparsity.sparsity=0.5"], parse)
    assert sorted(o for j in narrowed for o in j if o.startswith("sparsity.")) == ["sparsity.sparsity=0.5"] * 2


def test_fmnist_compare_is_one_dense_job_and_ten_algorithms_at_three_sparsities():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dst.app.grids import grid_jobs  # also registers hydra/sweeper=grids for compose()

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["+sweep=fmnist_compare"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.dst_grids.GridsSweeper"
    assert list(cfg.trainer.seeds) == [0, 1, 2]
    jobs = grid_jobs([dict(g) for g in cfg.hydra.sweeper.grids], [], OverridesParser.create().parse_overrides)
    algorithms = [o.split("=")[1] for j in jobs for o in j if o.startswith("sparsity=")]
    assert algorithms.count("dense") == 1 and len(set(algorithms)) == 11 and len(jobs) == 31


@pytest.mark.slow   # a real three-job sweep (20 s): `make test-slow`, which .ci/run runs too
def test_grids_sweep_runs_every_cell_once_and_reports_them(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    out = dst_train("+sweep=fmnist_compare",
                    "hydra.sweeper.grids=[{sparsity:dense},{sparsity:'set,rigl',sparsity.sparsity:0.9}]",
                    "trainer.seeds=[0]", f"dataset.data_dir={data_dir}", "trainer.epochs=1",
                    "trainer.batch_size=64", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == ["0_dense_lenet300_fashion_mnist_s0", "1_set_lenet300_fashion_mnist_s0",
                    "2_rigl_lenet300_fashion_mnist_s0"], runs
    report = (sweep / "report.md").read_text()
    assert "| dense | 0.0 |" in report and "| rigl | 0.9 | erk |" in report and "| set | 0.9 | erk |" in report
