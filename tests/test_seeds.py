"""``trainer.seeds``: replicas in one program match their single runs, write complete run directories that
dst-report reads as separate runs, resume after SIGTERM, and refuse bad seed lists in one sentence."""

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
from dst.app.seeds import run_seeds
from dst.app.validate import ConfigError
from dst.report import collect_runs
from dst.report import group_rows

CONF = pathlib.Path(__file__).resolve().parents[1] / "conf"
QUIET = open(os.devnull, "w")
CLOCK = ("wall_time", "time/elapsed", "steps_per_sec", "run_dir")


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist", n_train=1280)


@pytest.mark.slow   # three real runs (30 s); the common suite checks vmapped replicas of every algorithm
# csr: the kernels run once per replica, in one program; born: each replica's layers created in storage from its seed
@pytest.mark.parametrize("backend", ["masked", "csr", "csr born"])
def test_each_replica_matches_the_single_run_of_its_seed(tmp_path, data_dir, backend, capsys):
    common = [f"dataset.data_dir={data_dir}", "trainer.epochs=3", "trainer.batch_size=64", "logger=none",
              "dataset.val_fraction=0.1", "sparsity.update_every=5", f"sparsity.backend={backend.split()[0]}"]
    if backend == "csr born":
        common.append("sparsity.born_sparse=true")
    summaries = run_seeds(composed(*common, "trainer.seeds=[0,2]"), tmp_path / "many", stream=QUIET)
    assert [s["status"] for s in summaries] == ["finished", "finished"]
    assert ("born sparse in csr storage" in capsys.readouterr().out) == (backend == "csr born")
    for seed in (0, 2):
        single = run(composed(*common, f"trainer.seed={seed}"), tmp_path / f"one_{seed}", stream=QUIET)
        read = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        mine, ref = read(tmp_path / "many" / f"seed_{seed}"), read(tmp_path / f"one_{seed}")
        # The first epoch within float tolerance: same data order, validation rows, masks and updates.
        for key, value in ref[0].items():
            if key in CLOCK:
                continue
            if isinstance(value, float):
                assert mine[0][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
            else:
                assert mine[0][key] == value, key
        assert abs(summaries[(0, 2).index(seed)]["test/accuracy"] - single["test/accuracy"]) <= 0.005
    runs = collect_runs([tmp_path / "many"])
    assert sorted(r.path.name for r in runs) == ["seed_0", "seed_2"]
    (row,) = group_rows(runs)
    assert row["runs"] == 2 and row["seeds"] == [0, 2]


def test_replicas_whose_stored_capacities_differ_are_one_sentence():
    from dst.app.seeds import check_same_storage
    from dst.backends import Layout

    def part(count):
        storage = type("Storage", (), {"layout_of": {"Dense_0/kernel": Layout((4, 3), count)}})
        return type("Part", (), {"storage": storage})
    check_same_storage([0, 1], [part(5), part(5)])
    with pytest.raises(ConfigError, match=r"Dense_0/kernel holds 5 weights for seed 0 but 6 for seed 1"):
        check_same_storage([0, 1], [part(5), part(6)])


@pytest.mark.parametrize("seeds", ["[]", "[1,1]", "[-1]"])
def test_bad_seed_lists_are_one_sentence(tmp_path, data_dir, seeds):
    with pytest.raises(ConfigError, match=r"trainer.seeds must be a non-empty list of distinct non-negative"):
        run_seeds(composed(f"dataset.data_dir={data_dir}", f"trainer.seeds={seeds}"), tmp_path, stream=QUIET)


@pytest.mark.slow
def test_replicas_stopped_by_sigterm_resume_to_the_uninterrupted_outputs(tmp_path, tmp_path_factory):
    data = write_dataset(tmp_path_factory.mktemp("big") / "fashion_mnist", n_train=6400)
    # LeNet-300-100 (a tenth of set_mlp's weights) over 8 epochs: the signal lands with most of the run
    # still to go, at a fraction of the cost.
    base = ["model=lenet300", "trainer.seeds=[0,1]", "trainer.epochs=8", "trainer.batch_size=64", "logger=none",
            f"dataset.data_dir={data}", "sparsity.update_every=40"]
    whole = tmp_path / "whole"
    assert dst_train(*base, f"hydra.run.dir={whole}", cwd=tmp_path).returncode == 0
    part = tmp_path / "part"
    proc = subprocess.Popen([sys.executable, "-m", "dst.train", *base, f"hydra.run.dir={part}"], cwd=tmp_path,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not ((part / "seed_1" / "metrics.jsonl").is_file() and (part / "seed_1" / "metrics.jsonl").read_text()):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    assert proc.returncode == 143
    out = dst_train(*base, f"hydra.run.dir={part}", cwd=tmp_path)
    assert out.returncode == 0 and "resuming from" in out.stdout, out.stderr[-2000:]
    def read(run_dir):
        return [{k: v for k, v in json.loads(line).items() if k not in CLOCK}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    for seed in (0, 1):
        assert read(part / f"seed_{seed}") == read(whole / f"seed_{seed}")


def test_replica_names_replace_the_seed_the_name_ends_in():
    from dst.app.seeds import with_seed

    base = {"trainer": {"seed": 0, "seeds": [0, 3]}}
    assert with_seed({**base, "name": "rigl_lenet300_fashion_mnist_s0"}, 3)["name"] == "rigl_lenet300_fashion_mnist_s3"
    assert with_seed({**base, "name": "rigl_wrn22_cifar10_s0.8_seed0"}, 3)["name"] == "rigl_wrn22_cifar10_s0.8_seed3"
    assert with_seed({**base, "name": "custom"}, 3)["name"] == "custom_s3"
