"""sparsity.backend=auto: each sparse layer timed masked and on csr at the run's shapes; stored only where
csr is faster and saves enough over the run; the choice on the console, in summary.json, and kept
across a resume.

The run-level tests fix the timings (the choice must not depend on the machine's load in a test); the
timing itself is checked on a real layer.
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose
from hydra import initialize_config_dir
from idx_data import write_dataset
from omegaconf import OmegaConf

from dst import kernels
from dst.app import run as run_module
from dst.models import MLP
from dst.models import VisionTransformer
from dst.train import auto

CONF = pathlib.Path(__file__).resolve().parents[1] / "conf"
QUIET = open(os.devnull, "w")


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def test_the_layers_faster_on_csr_are_stored_when_together_they_save_enough_over_the_run():
    bar_steps = int(1e3 * auto.MIN_SAVING_S)          # steps at which 1 ms a step saves the bar
    t = lambda masked_ms, sparse_ms, steps: auto.LayerTiming(masked_ms, sparse_ms, 128, steps=steps)
    assert auto.stored_layers({"a": t(2.0, 1.0, 1_000_000), "b": t(1.0, 2.0, 1_000_000)}) == ["a"]   # b slower
    assert auto.stored_layers({"a": t(2.0, 1.0, bar_steps // 2)}) == []                     # half the bar
    # Two layers that each save half the bar: together they repay storing, so both are stored.
    assert auto.stored_layers({"a": t(2.0, 1.0, bar_steps // 2 + 1), "b": t(2.0, 1.0, bar_steps // 2 + 1)}) == \
        ["a", "b"]
    # A layer that saves little is stored beside one that saves much (one storage, one update program).
    assert auto.stored_layers({"a": t(2.0, 1.0, 10 * bar_steps), "b": t(1.0, 0.99, 10 * bar_steps)}) == ["a", "b"]
    assert t(2.0, 1.5, 3000).saving_s == pytest.approx(1.5)


def test_the_rows_a_layer_sees_are_the_batch_times_its_tokens():
    mlp = MLP(hidden=(16,), num_classes=3)
    x = jnp.zeros((5, 12))
    params = mlp.init(jax.random.key(0), x)["params"]
    assert auto.dense_input_rows(mlp, params, {}, x, ["Dense_0/kernel", "Dense_1/kernel"]) == {
        "Dense_0/kernel": 5, "Dense_1/kernel": 5}
    vit = VisionTransformer(num_classes=3, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32)
    img = jnp.zeros((2, 8, 8, 1))
    params = vit.init(jax.random.key(0), img)["params"]
    layers = ["block0/mlp_fc1/kernel", "head/kernel"]
    # the MLP sees every token (4 patches and the class token) of each image; the head the class token
    assert auto.dense_input_rows(vit, params, {}, img, layers) == {"block0/mlp_fc1/kernel": 10, "head/kernel": 2}


@pytest.mark.skipif(not kernels.available(), reason="needs the compiled kernels")
def test_timing_a_real_layer_gives_both_times_at_its_rows():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 32)).astype(np.float32)
    mask = rng.random((64, 32)) < 0.1
    t = auto.time_layer(w, mask, rows=16, rounds=2)
    assert t.rows == 16 and t.masked_ms > 0 and t.sparse_ms > 0


@pytest.fixture
def mnist(tmp_path):
    return write_dataset(tmp_path / "mnist")


def _cfg(data_dir, *extra):
    return composed("model=mlp", "model.hidden=[24,16]", "dataset=mnist", f"dataset.data_dir={data_dir}",
                    "trainer.epochs=1", "trainer.batch_size=64", "logger=none", "sparsity=rigl",
                    "sparsity.sparsity=0.8", "sparsity.update_every=3", *extra)


@pytest.mark.skipif(not kernels.available(), reason="needs the compiled kernels")
def test_auto_stores_the_layers_it_chose_and_makes_the_masked_runs_decisions(tmp_path, mnist, monkeypatch, capsys):
    fixed = {"Dense_0/kernel": auto.LayerTiming(5.0, 1.0, 64), "Dense_1/kernel": auto.LayerTiming(1.0, 3.0, 64)}
    calls = []

    def fake_choose(model, params, model_state, masks, layers, example, steps, rounds=5, convolutions=None):
        calls.append((tuple(layers), example.shape[0], steps))
        return {n: t._replace(steps=10_000) for n, t in fixed.items() if n in layers}

    monkeypatch.setattr(auto, "choose", fake_choose)
    masked = run_module.run(_cfg(mnist), tmp_path / "masked", stream=QUIET)
    summary = run_module.run(_cfg(mnist, "sparsity.backend=auto"), tmp_path / "auto", stream=QUIET)
    out = capsys.readouterr().out
    assert calls == [(("Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"), 64, masked["total_steps"])]
    assert "sparsity: backend auto: Dense_0/kernel (64 rows) forward+backward 5.000 ms masked, 1.000 ms csr, " \
           "+40.0 s over 10000 steps -> csr." in out
    assert "-> masked." in out and "sparsity: backend csr stores Dense_0/kernel." in out
    assert summary["backend"] == "auto" and json.loads(summary["stored_layers"]).keys() == {"Dense_0/kernel"}
    choice = json.loads(summary["auto_backend"])
    assert choice["Dense_0/kernel"]["backend"] == "csr" and choice["Dense_1/kernel"]["backend"] == "masked"
    assert choice["Dense_1/kernel"]["masked_ms"] == 1.0 and choice["Dense_1/kernel"]["sparse_ms"] == 3.0
    for key in ("test/accuracy", "sparsity/Dense_0/kernel", "sparsity/Dense_1/kernel", "topology/updates"):
        assert summary[key] == pytest.approx(masked[key], abs=1e-6), key
    assert (tmp_path / "auto" / "auto_backend.json").is_file()

    # a resume takes the first start's choice: no timing, the same stored layers
    calls.clear()
    cfg = _cfg(mnist, "sparsity.backend=auto", "trainer.epochs=2")
    resumed = run_module.run(cfg, tmp_path / "auto", stream=QUIET)
    assert calls == [] and "the choice of this run's first start" in capsys.readouterr().out
    assert json.loads(resumed["stored_layers"]).keys() == {"Dense_0/kernel"}


@pytest.mark.parametrize("algorithm, why", [
    pytest.param("topkast", "sparsity.algorithm=topkast stores its backward set and keeps the weights outside it "
                            "dense, which auto's timing at the forward density does not measure "
                            "(sparsity.backend=csr runs it).",
                 marks=pytest.mark.slow),   # a whole run: `make test` runs SNFS's
    ("snfs", "sparsity.algorithm=snfs reads the dense gradient of every step, which a stored layer forms at a dense "
             "layer's cost (sparsity.backend=csr runs it)."),
])
def test_auto_keeps_every_layer_masked_where_csr_cannot_save(tmp_path, mnist, capsys, algorithm, why):
    summary = run_module.run(_cfg(mnist, f"sparsity={algorithm}", "sparsity.backend=auto"), tmp_path / algorithm,
                             stream=QUIET)
    out = capsys.readouterr().out
    assert f"sparsity: backend auto keeps every layer masked: {why}" in out
    assert summary["backend"] == "auto" and "stored_layers" not in summary


@pytest.mark.skipif(not kernels.available(), reason="needs the compiled kernels")
def test_auto_times_each_convolution_at_the_input_it_sees():
    """LeNet-5's convolutions are timed beside its dense layers (at their own input shapes: the batch of 28x28x1
    images, then the first convolution's pooled output), each with both times; without geometries, only the
    dense layers."""
    import dst
    from dst import backends
    from dst.models import LeNet5

    model = LeNet5(num_classes=10)
    x = jnp.zeros((8, 28, 28, 1))
    params = model.init(jax.random.key(0), x)["params"]
    layers = dst.sparsifiable_layers(params)
    masks = dst.init_masks(jax.random.key(1), params, dst.layer_densities(params, 0.9, "erk"))
    convolutions, _ = backends.convolutions(model, x[:1], layers)
    inputs = auto._layer_inputs(model, params, {}, x, layers)
    assert set(convolutions) == {"Conv_0/kernel", "Conv_1/kernel"}
    assert inputs["Conv_0/kernel"][1] == (8, 28, 28, 1) and inputs["Conv_1/kernel"][1][0] == 8
    timings = auto.choose(model, params, {}, masks, layers, x, steps=100, rounds=2, convolutions=convolutions)
    assert set(timings) == set(layers)
    for name in convolutions:
        assert timings[name].rows == 8 and timings[name].masked_ms > 0 and timings[name].sparse_ms > 0
        assert timings[name].steps == 100
    assert set(auto.choose(model, params, {}, masks, layers, x, steps=100, rounds=1)) == {
        n for n in layers if n not in convolutions}
