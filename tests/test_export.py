"""dst-export and dst.load_exported: a run's model written compactly predicts what the masked model does.

The expectation is computed from the run's own checkpoint: its dense params with zeros off its masks,
run through the flax model in evaluation mode (the masked model every other test checks).
"""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_helpers import dst_train_here
from idx_data import write_dataset

import dst
from dst.app.export_cli import main as dst_export
from dst.models import MLP

MODEL = ("model=mlp", "model.hidden=[24,16]")
pytestmark = pytest.mark.xdist_group("export")   # one worker: the two training runs are made once


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data_dir = write_dataset(root / "fashion_mnist")
    out = {}
    for name, extra in {"masked": (), "stored": ("sparsity.backend=condensed",)}.items():
        run_dir = root / name
        done = dst_train_here(*MODEL, "dataset=fashion_mnist", f"dataset.data_dir={data_dir}", "trainer.epochs=1",
                              "trainer.batch_size=64", "logger.name=none", "sparsity=rigl", "sparsity.sparsity=0.8",
                              "sparsity.structure=fan_in", "sparsity.update_every=5", *extra,
                              f"hydra.run.dir={run_dir}", cwd=root)
        assert done.returncode == 0, done.stderr[-2000:]
        out[name] = run_dir
    return out


def masked_logits(run_dir, x):
    """The masked model of the masked run's last checkpoint."""
    manager = ocp.CheckpointManager((run_dir / "checkpoints").absolute())
    state = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    state = state["state"]["state"]
    params = jax.tree_util.tree_map(lambda p, m: np.where(m, p, 0), state["params"], state["live"])
    return MLP(hidden=(24, 16), num_classes=10).apply({"params": params}, x)


@pytest.mark.slow   # two real training runs, exported three ways
@pytest.mark.parametrize("fmt", ["dense", "csr", "condensed"])
def test_an_exported_model_predicts_what_the_masked_model_does(runs, tmp_path, fmt):
    x = jax.random.normal(jax.random.key(0), (17, 28, 28, 1))
    expected = masked_logits(runs["masked"], x)
    for run in ("masked", "stored"):
        path = tmp_path / f"{run}_{fmt}.npz"
        assert dst_export([str(runs[run]), "--format", fmt, "--out", str(path)]) == 0
        predict = dst.load_exported(path)
        assert predict.meta["format"] == fmt
        assert set(predict.meta["stored"]) == (set() if fmt == "dense" else {"Dense_0/kernel", "Dense_1/kernel",
                                                                           "Dense_2/kernel"})
        if run == "masked":   # the stored run is the same training on another backend: close, not equal
            np.testing.assert_allclose(predict(x), expected, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(predict(x[:1]), expected[:1], rtol=1e-5, atol=1e-5)   # the gather path
        else:
            assert np.mean(np.argmax(predict(x), -1) == np.argmax(expected, -1)) >= 0.8


@pytest.mark.slow
def test_a_compact_format_is_smaller_than_dense(runs, tmp_path):
    sizes = {}
    for fmt in ("dense", "csr", "condensed"):
        path = tmp_path / f"{fmt}.npz"
        assert dst_export([str(runs["masked"]), "--format", fmt, "--out", str(path)]) == 0
        sizes[fmt] = path.stat().st_size
    assert sizes["condensed"] < sizes["csr"] < sizes["dense"]


def test_bad_export_arguments_are_one_sentence(tmp_path, capsys):
    assert dst_export([str(tmp_path), "--format", "coo", "--out", str(tmp_path / "x.npz")]) == 2
    assert "error: --format must be one of dense, csr, condensed; got 'coo'." in capsys.readouterr().err
    assert dst_export([str(tmp_path), "--out", str(tmp_path / "x.npz")]) == 2
    assert "is not a run directory (no .hydra/config.yaml)." in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_a_truncated_or_foreign_file_is_one_sentence_not_a_zip_traceback(runs, tmp_path):
    good = tmp_path / "good.npz"
    assert dst_export([str(runs["masked"]), "--format", "csr", "--out", str(good)]) == 0
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    cases = {truncated: "it is truncated or not a .npz archive", foreign: "it has no dst metadata",
             text: "it is truncated or not a .npz archive"}
    for path, why in cases.items():
        with pytest.raises(ValueError) as err:
            dst.load_exported(path)
        assert str(err.value) == (f"{path} is not a model exported by dst-export ({why}); export the run again "
                                  "with dst-export RUN_DIR --out FILE.npz.")
    with pytest.raises(FileNotFoundError):
        dst.load_exported(tmp_path / "missing.npz")
    assert dst.load_exported(good).meta["format"] == "csr"


@pytest.mark.slow   # a real LeNet-5 run on csr
def test_a_run_with_stored_convolutions_exports_and_predicts_as_it_evaluated(tmp_path):
    """LeNet-5 on csr stores a convolution beside its fully connected layers; its checkpoint exports (the
    convolution expanded from its slots over its 4-D kernel, then stored again in the file) and the exported
    model's test accuracy is the run's own last evaluation, which ran the stored convolution."""
    data_dir = write_dataset(tmp_path / "fashion_mnist")
    run_dir = tmp_path / "lenet5"
    done = dst_train_here("model=lenet5", "dataset=fashion_mnist", f"dataset.data_dir={data_dir}", "trainer.epochs=1",
                          "trainer.batch_size=64", "logger.name=none", "sparsity=rigl", "sparsity.sparsity=0.8",
                          "sparsity.update_every=5", "sparsity.backend=csr", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Conv_1/kernel" in done.stdout.splitlines()[0]          # "... stores Conv_1/kernel, Dense_0/kernel, ..."
    data = dst.data.load("fashion_mnist", data_dir)
    path = tmp_path / "lenet5.npz"
    assert dst_export([str(run_dir), "--format", "csr", "--out", str(path)]) == 0
    predict = dst.load_exported(path)
    assert "Conv_1/kernel" in predict.meta["convolutions"]          # stored, run on the kernels
    accuracy = float(np.mean(np.argmax(predict(data.test_x), -1) == data.test_y))
    summary = __import__("json").loads((run_dir / "summary.json").read_text())
    assert accuracy == pytest.approx(summary["test/accuracy"], abs=1 / len(data.test_y))


@pytest.mark.parametrize("fmt", ["csr", "condensed"])
def test_an_exported_conv_net_predicts_with_its_convolutions_stored(tmp_path, fmt):
    """A WRN (BatchNorm, stride-2 and 1x1 shortcut convolutions) at 75% constant fan-in, written straight by
    export_model: every convolution is stored with its geometry, and the loaded model (convolutions on the
    kernels, batches of 7 and of one) predicts what the flax model does on the masked params."""
    from algo_helpers import masks_for

    from dst import backends
    from dst import structures
    from dst.export import export_model
    from dst.masks import named_leaves
    from dst.models.wide_resnet import WideResNet

    config = {"_target_": "dst.models.wide_resnet.WideResNet", "depth": 10, "widen_factor": 1, "num_classes": 5}
    model = WideResNet(depth=10, widen_factor=1, num_classes=5)
    x = jax.random.normal(jax.random.key(1), (7, 8, 8, 3))
    variables = model.init(jax.random.key(0), x)
    params, model_state = variables["params"], {"batch_stats": variables["batch_stats"]}
    # BatchNorm averages away from (0, 1), so evaluation mode is not the identity.
    model_state = jax.tree_util.tree_map(lambda a: a + 0.1 * jax.random.uniform(jax.random.key(5), a.shape),
                                         model_state)
    layers = dst.sparsifiable_layers(params)
    masks = masks_for(params, 0.75, structures.fan_in())
    convolutions, kept = backends.convolutions(model, x, layers)
    assert not kept and len(convolutions) >= 5
    path = tmp_path / f"wrn.{fmt}.npz"
    counts = export_model(path, fmt, config, 5, params, masks, model_state, layers, convolutions)
    assert set(convolutions) <= set(counts)
    predict = dst.load_exported(path)
    meta = predict.meta
    assert meta["convolutions"]["stem_conv/kernel"] == {"strides": [1, 1], "padding": [[1, 1], [1, 1]]}
    assert any(c["strides"] == [2, 2] for c in meta["convolutions"].values())
    with np.load(path) as data:       # the convolutions are stored, not written dense
        assert not any(f"params/{n}" in data.files for n in convolutions)
        held = {n: data[f"stored/{n}/values"].size for n in convolutions}
    assert held == {n: int(np.sum(named_leaves(masks)[n])) for n in convolutions}
    masked = jax.tree_util.tree_map(lambda p, m: np.where(m, p, 0), params, masks)
    expected = model.apply({"params": masked, **model_state}, x, train=False)
    np.testing.assert_allclose(predict(x), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(predict(x[:1]), expected[:1], rtol=1e-4, atol=1e-5)


def test_convolutions_the_kernels_cannot_run_export_dense_and_an_unstorable_format_is_one_sentence(tmp_path):
    """A grouped and a dilated convolution are written dense beside the stored plain one (the loaded model
    predicts as the flax model does); asking condensed for layers without one fan-in is one sentence naming the
    first such layer, and no file is left behind."""
    from algo_helpers import masks_for
    from user_models import GroupedDilatedNet

    from dst import backends
    from dst.export import export_model

    model = GroupedDilatedNet(num_classes=5)
    x = jax.random.normal(jax.random.key(1), (3, 9, 9, 3))
    params = model.init(jax.random.key(0), x)["params"]
    layers = dst.sparsifiable_layers(params)
    masks = masks_for(params, 0.5)
    convolutions, kept = backends.convolutions(model, x, layers)
    config = {"_target_": "user_models.GroupedDilatedNet", "num_classes": 5}
    path = tmp_path / "net.npz"
    counts = export_model(path, "csr", config, 5, params, masks, {}, layers, convolutions)
    assert "plain/kernel" in counts and not set(kept) & set(counts)
    predict = dst.load_exported(path)
    expected = model.apply({"params": dst.apply_masks(params, masks)}, x)
    np.testing.assert_allclose(predict(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError) as err:
        export_model(tmp_path / "no.npz", "condensed", config, 5, params, masks, {}, layers, convolutions)
    assert str(err.value).startswith("--format condensed: layer plain/kernel has fan-ins from ")
    assert str(err.value).endswith("the condensed backend needs one constant fan-in per layer "
                                   "(sparsity.structure=fan_in or n_m).")
    assert not (tmp_path / "no.npz").exists()
