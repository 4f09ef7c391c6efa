"""Every config group composes, and every algorithm's conf/sparsity file runs end to end in-process."""

import pathlib

import pytest
from algo_helpers import every_algorithm
from hydra import compose
from hydra import initialize_config_dir
from idx_data import write_dataset
from omegaconf import OmegaConf

import dst
from dst.app.run import run

CONF = pathlib.Path(__file__).resolve().parents[1] / "conf"


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def test_every_group_has_a_default_and_the_default_is_rigl_erk90_lenet300_fmnist():
    cfg = composed()
    assert (cfg["sparsity"]["algorithm"], cfg["sparsity"]["sparsity"], cfg["sparsity"]["distribution"],
            cfg["model"]["name"], cfg["dataset"]["name"]) == ("rigl", 0.9, "erk", "lenet300", "fashion_mnist")
    for group in ("model", "dataset", "sparsity", "optimizer", "trainer", "logger"):
        assert cfg[group], group
    assert cfg["trainer"]["seed"] == 0 and cfg["name"] == "rigl_lenet300_fashion_mnist_s0"


def test_every_registered_algorithm_has_a_config():
    files = {p.stem for p in (CONF / "sparsity").glob("*.yaml")}
    assert set(dst.algorithms.names()) <= files


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "d")


@pytest.mark.parametrize("algorithm", every_algorithm())
def test_each_algorithm_config_trains_to_its_sparsity(algorithm, data_dir, tmp_path):
    # A narrow MLP: the algorithm's own config is under test, and small layers compile in less time.
    overrides = [f"sparsity={algorithm}", f"dataset.data_dir={data_dir}", "trainer.epochs=2",
                 "trainer.batch_size=64", "logger=none", "model=mlp", "model.hidden=[20,12]"]
    if "update_every" in composed(f"sparsity={algorithm}")["sparsity"]:
        overrides.append("sparsity.update_every=3")
    if algorithm == "imp":      # two levels after the dense one: 0.8^2 of the weights remain
        overrides.append("sparsity.levels=2")
    cfg = composed(*overrides)
    summary = run(cfg, tmp_path, stream=open("/dev/null", "w"))
    assert summary["status"] == "finished"
    target = 1 - 0.8 ** 2 if algorithm == "imp" else cfg["sparsity"]["sparsity"]
    assert summary["sparsity/global"] == pytest.approx(target, abs=0.005), algorithm
    assert "dead_units/total" in summary and summary["test/accuracy"] > 0.3


PRESET_BASELINES = [
    ("rigl_wrn22_cifar10", "static", []),
    ("rigl_lenet300_mnist", "static", []),
    ("snfs_wrn28_2_cifar10", "set", []),
    ("snfs_wrn28_2_cifar10", "dense", ["sparsity.sparsity=0"]),
    ("rigl_resnet50_imagenet", "static", ["dataset.data_dir=/tmp"]),
]


@pytest.mark.parametrize("preset, algorithm, extra", PRESET_BASELINES)
def test_a_presets_baseline_leaves_out_the_other_algorithms_settings(preset, algorithm, extra):
    """The presets document `sparsity=static` (etc.) for their baselines: the preset's schedule keys,
    settings of another algorithm, are left out with a note; a key no algorithm has is still an error."""
    from dst.app.validate import ConfigError
    from dst.app.validate import check_algorithm

    cfg = composed(f"experiment={preset}", f"sparsity={algorithm}", *extra)
    notes = []
    algo = check_algorithm(cfg["sparsity"], 10_000, notes.append)
    assert algo is not None and cfg["sparsity"]["algorithm"] == algorithm
    if algorithm != "set":
        assert notes and f"sparsity: {algorithm} takes no" in notes[0] and "update_every" in notes[0]
    with pytest.raises(ConfigError, match=r"sparsity.update_evry is not a setting of algorithm"):
        check_algorithm({**cfg["sparsity"], "update_evry": 5}, 10_000, notes.append)
