"""Structures and SRigL through the real CLI: a structured run names the layers its structure leaves
dense, SRigL logs its ablations, and every bad structure setting is one sentence before anything runs."""

import json
import pathlib

import jax.numpy as jnp
import pytest
from cli_helpers import dst_train_here
from idx_data import write_dataset

CONF = pathlib.Path(__file__).resolve().parent.parent / "conf"
MODEL = ("model=mlp", "model.hidden=[20,12]")       # reduction dimensions 784, 20 and 12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist")


def _train(tmp_path, data_dir, *overrides):
    run_dir = tmp_path / "run"
    out = dst_train_here(*MODEL, "dataset=fashion_mnist", f"dataset.data_dir={data_dir}", "trainer.epochs=2",
                         "trainer.batch_size=64", "logger.name=none", *overrides, f"hydra.run.dir={run_dir}",
                         cwd=tmp_path)
    return run_dir, out


def test_an_n_m_run_names_the_layers_it_leaves_dense_and_regrows(tmp_path, data_dir):
    run_dir, out = _train(tmp_path, data_dir, "sparsity=rigl", "sparsity.structure=n_m", "sparsity.n_m=[1,8]",
                          "sparsity.sparsity=null", "sparsity.update_every=4")
    assert out.returncode == 0, out.stderr[-2000:]
    first = out.stdout.splitlines()[:3]
    assert "sparsity: 1:8 leaves Dense_1/kernel dense: its reduction dimension 20 is not a multiple of M=8." in first
    assert "sparsity: 1:8 leaves Dense_2/kernel dense: its reduction dimension 12 is not a multiple of M=8." in first
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads(summary["dense_by_structure"]) == {
        "Dense_1/kernel": "its reduction dimension 20 is not a multiple of M=8",
        "Dense_2/kernel": "its reduction dimension 12 is not a multiple of M=8"}
    assert summary["sparsity/Dense_0/kernel"] == 0.875 and summary["sparsity/Dense_1/kernel"] == 0.0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["topology/dropped/Dense_0/kernel"] > 0 for r in records)


@pytest.mark.parametrize("overrides, sentence", [
    (("sparsity.structure=diagonal",),
     "sparsity.structure must be one of unstructured, n_m, fan_in, block; got 'diagonal'."),
    (("sparsity.structure=n_m", "sparsity.n_m=[4,4]", "sparsity.sparsity=null"),
     "sparsity.n_m must be two integers [N, M] with 0 < N < M; got [4, 4]."),
    (("sparsity.structure=n_m", "sparsity.n_m=[2,4]"),
     "sparsity.sparsity must be null or 0.5 (1 - N/M) with sparsity.structure=n_m and sparsity.n_m=[2, 4]; got 0.9."),
    (("sparsity.structure=n_m", "sparsity.n_m=[1,9]", "sparsity.sparsity=null"),
     "sparsity.n_m=[1, 9] divides none of the sparse layers (Dense_0/kernel: its reduction dimension 784 is not "
     "a multiple of M=9;"),
    (("sparsity.structure=block", "sparsity.block=[16,16]"),
     "sparsity.block=[16, 16] is larger than layer Dense_1/kernel (20 x 12 in its matrix view); use a smaller "
     "block or add the layer to sparsity.dense_layers."),
    (("sparsity.structure=block", "sparsity.block=[1,1]"),
     "sparsity.block must be two positive integers [rows, cols], not both 1; got [1, 1]."),
    (("sparsity=gmp", "sparsity.structure=n_m", "sparsity.n_m=[2,4]", "sparsity.sparsity=null"),
     "sparsity.structure=n_m cannot be kept by GMP: its cubic schedule prunes to per-layer counts"),
    (("sparsity=set", "sparsity.sign_split=true", "sparsity.structure=block", "sparsity.block=[2,2]"),
     "sparsity.structure=block cannot be kept by the drop rule sign_split_drop"),
    (("sparsity=srigl", "sparsity.structure=unstructured"),
     "sparsity.structure=unstructured cannot be kept by SRigL: it is defined on constant fan-in"),
    (("sparsity=srigl", "sparsity.min_salient_fraction=1.2"),
     "sparsity.min_salient_fraction must be in [0, 1); got 1.2."),
])
def test_bad_structure_settings_are_one_sentence(tmp_path, data_dir, overrides, sentence):
    run_dir, out = _train(tmp_path, data_dir, *(() if any(o.startswith("sparsity=") for o in overrides)
                                                 else ("sparsity=rigl",)), *overrides)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and sentence in lines[0], out.stderr
    assert not (run_dir / "summary.json").exists()


def test_srigl_logs_ablated_units_and_fan_ins(tmp_path, data_dir):
    run_dir, out = _train(tmp_path, data_dir, "sparsity=srigl", "sparsity.sparsity=0.8", "sparsity.update_every=4",
                          "sparsity.distribution=uniform", "sparsity.min_salient_fraction=0.9")
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert r["ablated_units/Dense_2/kernel"] == 0          # the classifier is never ablated
        assert r["ablated_units/total"] == sum(r[f"ablated_units/Dense_{i}/kernel"] for i in range(3))
        assert r["fan_in/Dense_0/kernel"] >= round(0.2 * 784)


def test_srigl_resolves_the_classifier_without_changing_the_config(data_dir):
    # Replicas write their configs after `prepare`: a resolved value there would split seed 0 from the others.
    from hydra import compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from dst.app.run import prepare
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=[
            "sparsity=srigl", *MODEL, "dataset=fashion_mnist", f"dataset.data_dir={data_dir}", "logger=none"]),
            resolve=True)
    plan = prepare(cfg, say=lambda *_: None)
    assert cfg["sparsity"]["no_ablation"] is None
    report = plan.algo.report(plan.algo.init({"Dense_2": {"kernel": jnp.ones((12, 10))}},
                                             {"Dense_2": {"kernel": jnp.ones((12, 10), bool)}}),
                              {"Dense_2": {"kernel": jnp.ones((12, 10), bool)}})
    assert report["ablated_units/Dense_2/kernel"] == 0


def test_report_labels_name_the_structure_and_only_its_own_setting(tmp_path):
    from dst.report.collect import RunInfo
    from dst.report.summarize import other_settings

    def run(name, structure, n_m=None, block=None):
        sp = {"algorithm": "rigl", "sparsity": 0.5, "distribution": "erk", "structure": structure, "n_m": n_m,
              "block": block}
        cfg = {"sparsity": sp, "model": {"name": "lenet300"}, "dataset": {"name": "fashion_mnist"}}
        return RunInfo(tmp_path / name, "finished", cfg, {}, [])

    runs = [run("u", "unstructured"), run("nm", "n_m", n_m=[2, 4]), run("b", "block", block=[4, 4]),
            run("alone", "n_m", n_m=[1, 4])]
    runs[3].config["sparsity"]["sparsity"] = 0.75          # the only run of its five base keys
    labels = other_settings(runs)
    assert labels[tmp_path / "u"] == "sparsity.structure=unstructured"
    assert labels[tmp_path / "nm"] == "sparsity.n_m=[2, 4], sparsity.structure=n_m"
    assert labels[tmp_path / "b"] == "sparsity.block=[4, 4], sparsity.structure=block"
    assert labels[tmp_path / "alone"] == "sparsity.n_m=[1, 4], sparsity.structure=n_m"
