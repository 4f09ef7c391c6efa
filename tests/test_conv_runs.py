"""The papers' setups through the real config tree: presets, BN conv nets, the user's own model, and
the bad input around models and data, each before anything compiles."""

import json
import os
import pathlib
import sys

import pytest
from algo_helpers import FAST_ALGORITHMS
from algo_helpers import every_algorithm
from cifar_data import write_cifar10
from cli_helpers import ENV
from cli_helpers import dst_train_here
from compile_flags import with_default_emitters
from hydra import compose
from hydra import initialize_config_dir
from idx_data import write_dataset
from image_data import write_folder
from omegaconf import OmegaConf

from dst.app.run import prepare
from dst.app.run import run
from dst.app.validate import ConfigError

CONF = pathlib.Path(__file__).resolve().parents[1] / "conf"
TESTS = pathlib.Path(__file__).resolve().parent
QUIET = open(os.devnull, "w")


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root / "cifar10", per_batch=32, n_test=40)
    write_dataset(root / "mnist")
    write_folder(root / "imagenet", per_class=(12, 2))
    return root


PRESETS = {
    "rigl_wrn22_cifar10": "cifar10",
    "snfs_wrn28_2_cifar10": "cifar10",
    "rigl_lenet300_mnist": "mnist",
    "mnist1d_mlp": "mnist1d",
    "rigl_resnet50_imagenet": "imagenet",
    "set_tutorial": "mnist",
    "srigl_resnet18_cifar10": "cifar10",
    "srigl_resnet50_imagenet": "imagenet",
    "mnist1d_lottery": "mnist1d",
    "srste_resnet50_imagenet": "imagenet",
    "set_mlp_million": "mnist",
}
# Absolute step settings of a preset that a two-step smoke run cannot reach.
SMOKE = {"snfs_wrn28_2_cifar10": ["sparsity.start_step=0", "sparsity.update_every=1"],
         "rigl_lenet300_mnist": ["sparsity.end_step=2"],
         "set_tutorial": ["dataset.subset.train=96", "dataset.subset.test=40", "sparsity.start_step=1",
                          "sparsity.update_every=1", "sparsity.end_step=2"],
         "mnist1d_lottery": ["sparsity.levels=1"],
         # The million-neuron MLP, narrowed, still born sparse, updated at its second step, a line a step.
         "set_mlp_million": ["model.hidden=[64,48,32]", "sparsity.epsilon=4", "sparsity.born_sparse=true",
                             "sparsity.start_step=1", "sparsity.update_every=1", "trainer.progress_every_steps=1"],
         "srste_resnet50_imagenet": ["optimizer.warmup_steps=1", "dataset.image_size=32", "dataset.resize=36",
                                     "dataset.workers=2", "dataset.chunk_steps=2"],
         "srigl_resnet50_imagenet": ["sparsity.end_step=2", "sparsity.update_every=1", "dataset.image_size=32",
                                     "dataset.resize=36", "dataset.workers=2", "dataset.chunk_steps=2"],
         "rigl_resnet50_imagenet": ["sparsity.end_step=2", "sparsity.update_every=1", "dataset.image_size=32",
                                    "dataset.resize=36", "dataset.workers=2", "dataset.chunk_steps=2"]}


def test_every_preset_is_tested():
    assert {p.stem for p in (CONF / "experiment").glob("*.yaml")} - {"default"} == set(PRESETS)


# The WRN and ResNet-50 presets compile deep conv nets (30-60 s each here), and set_tutorial's three
# 1000-wide layers train for 30 s: `make test-slow`.
WIDE = {"rigl_wrn22_cifar10", "snfs_wrn28_2_cifar10", "rigl_resnet50_imagenet", "set_tutorial",
        "srigl_resnet18_cifar10",
        "srigl_resnet50_imagenet", "srste_resnet50_imagenet"}


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - WIDE))
def test_preset_runs_a_few_steps(preset, data, tmp_path):
    _run_preset(preset, data, tmp_path)


# With XLA's default fusion emitters (tests/compile_flags.py): the suite's faster-compiling emitters made
# ResNet-50's few steps at 224x224 run 434 s instead of 159-179 s.
@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(WIDE))
@with_default_emitters
def test_wide_preset_runs_a_few_steps(preset, data, tmp_path):
    _run_preset(preset, data, tmp_path)


def _run_preset(preset, data, tmp_path):
    cfg = composed(f"experiment={preset}", f"dataset.data_dir={data / PRESETS[preset]}", "trainer.max_steps=2",
                   "trainer.batch_size=16", "logger=none", *SMOKE.get(preset, []))
    summary = run(cfg, tmp_path, stream=QUIET)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    if cfg["sparsity"]["algorithm"] == "imp":    # one level after the dense one: 2 + 2 steps, 20% pruned
        assert summary["status"] == "finished" and summary["step"] == 4 and len(records) == 2
        assert summary["sparsity/global"] == pytest.approx(0.2, abs=0.01)
        return
    assert summary["status"] == "finished" and summary["step"] == 2
    if cfg["sparsity"].get("epsilon"):     # SET's counts eps (n_in + n_out) per layer, not a global sparsity
        widths, eps = [784, *cfg["model"]["hidden"], 10], cfg["sparsity"]["epsilon"]
        for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
            dense = 1 - min(1.0, eps * (n_in + n_out) / (n_in * n_out))
            assert summary[f"sparsity/Dense_{i}/kernel"] == pytest.approx(dense, abs=1e-6)
        assert records[0]["topology/updates"] == 1
    else:
        assert summary["sparsity/global"] == pytest.approx(cfg["sparsity"]["sparsity"], abs=0.01)
    assert len(records) == 1 and records[0]["epoch"] == 1
    if preset == "rigl_wrn22_cifar10":
        assert summary["sparsity/stem_conv/kernel"] == 0.0 and summary["sparsity/layer3_2/conv2/kernel"] > 0.8
        dead = {k.removeprefix("dead_units/") for k in summary if k.startswith("dead_units/")} - {"total"}
        # A pre-activation WRN's only clean producer/consumer pairs are the two convs of each block.
        assert dead == {f"layer{g}_{i}/conv1/kernel" for g in (1, 2, 3) for i in range(3)}
        assert 0.2 < summary["flops/train_relative"] < 0.5      # 80% sparse, plus the dense stem and grads


@pytest.mark.parametrize("algorithm", every_algorithm(fast=FAST_ALGORITHMS + ("snip",)))  # one-shot, with BN
def test_the_users_own_bn_model_trains_with_every_algorithm(algorithm, data, tmp_path):
    overrides = [f"sparsity={algorithm}", "model._target_=user_models.TinyConvNet", "model.name=tiny",
                 "+model.width=8", "dataset=mnist", f"dataset.data_dir={data / 'mnist'}", "trainer.epochs=2",
                 "trainer.batch_size=64", "logger=none"]
    if "update_every" in composed(f"sparsity={algorithm}")["sparsity"]:
        overrides.append("sparsity.update_every=3")
    if algorithm == "imp":      # two levels after the dense one (BatchNorm statistics rewound with the weights)
        overrides.append("sparsity.levels=2")
    cfg = composed(*overrides)
    summary = run(cfg, tmp_path, stream=QUIET)
    assert summary["status"] == "finished"
    target = 1 - 0.8 ** 2 if algorithm == "imp" else cfg["sparsity"]["sparsity"]
    assert summary["sparsity/global"] == pytest.approx(target, abs=0.01)
    assert {"sparsity/Conv_0/kernel", "sparsity/Dense_0/kernel"} <= set(summary)
    assert not any("BatchNorm" in k for k in summary if k.startswith("sparsity/"))
    assert summary["test/accuracy"] > 0.3          # the band data set is learnable in 20 steps


@pytest.mark.slow   # a real dst-train process (20 s); tests/test_docs_examples.py composes the same overrides
def test_the_users_own_model_from_the_command_line(data, tmp_path):
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(TESTS), ENV.get("PYTHONPATH", "")])}
    import subprocess

    out = subprocess.run([sys.executable, "-m", "dst.train", "model._target_=user_models.TinyConvNet",
                          "model.name=tiny", "+model.width=6", f"dataset.data_dir={data / 'mnist'}",
                          "dataset=mnist", "trainer.epochs=1", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "takes no dropout" in out.stdout        # the model group's default, named and left out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and "sparsity/Conv_0/kernel" in summary


@pytest.mark.parametrize("overrides, sentence", [
    (["model=resnet50", "dataset=mnist1d"], "model resnet50 cannot take dataset.name=mnist1d inputs of shape (40,)"),
    (["model._target_=no_such_package.Net"], "model._target_=no_such_package.Net cannot be imported"),
    (["model._target_=user_models.Missing"], "module user_models has no attribute 'Missing'"),
    (["model._target_=user_models.no_module"], "must build a flax.linen Module"),
    (["model._target_=TinyConvNet"], "model._target_ must be a dotted path"),
    (["sparsity.dense_layers=[Dense]"], "sparsity.dense_layers=['Dense'] leave no layer sparse"),
    (["sparsity.dense_layers=['(']"], "is not a regular expression"),
    (["model.config=E", "model=vgg16", "dataset=cifar10"], "model.config of vgg16 must be one of"),
    (["+model.depth=3", "model=resnet18"], "model.depth is not an option of model resnet18"),
])
def test_bad_model_settings_are_one_sentence_before_anything_compiles(overrides, sentence, data):
    ds = "cifar10" if "dataset=cifar10" in overrides else "mnist1d" if "dataset=mnist1d" in overrides else "mnist"
    base = [f"dataset={ds}", f"dataset.data_dir={data / ds}" if ds != "mnist1d" else f"dataset.data_dir={data / ds}"]
    cfg = composed(*base, *[o for o in overrides if not o.startswith("dataset=")])
    with pytest.raises(ConfigError) as err:
        prepare(cfg, say=lambda msg: None)
    assert sentence in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("damage, sentence", [
    ("missing", "dst-data download cifar10"),
    ("truncated", "data_batch_3"),
    ("wrong_kind", "data_batch_3"),
])
def test_bad_cifar_files_are_one_sentence(damage, sentence, tmp_path):
    folder, _ = write_cifar10(tmp_path, per_batch=8, n_test=8)
    target = folder / "data_batch_3"
    if damage == "missing":
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:500])
    else:
        target.write_bytes(b"this is not a pickle at all")
    cfg = composed("dataset=cifar10", f"dataset.data_dir={tmp_path}")
    with pytest.raises(ConfigError) as err:
        prepare(cfg, say=lambda msg: None)
    assert sentence in str(err.value)


def test_model_that_cannot_take_the_data_exits_2_from_the_cli(tmp_path):
    out = dst_train_here("model=resnet50", "dataset=mnist1d", f"dataset.data_dir={tmp_path / 'm1d'}", "logger=none",
                         f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model resnet50 cannot take"), out.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
