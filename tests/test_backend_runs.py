"""Storage backends through the real CLI: a csr run names what it stores and makes the masked run's
topology decisions; every setting a backend cannot take is one sentence before anything compiles."""

import json

import pytest
from cli_helpers import dst_train_here
from idx_data import write_dataset

from dst import kernels

MODEL = ("model=mlp", "model.hidden=[24,16]")
pytestmark = pytest.mark.xdist_group("backend-runs")   # one worker: the data fixture is made once


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist")


def _train(tmp_path, data_dir, name, *overrides):
    run_dir = tmp_path / name
    out = dst_train_here(*MODEL, "dataset=fashion_mnist", f"dataset.data_dir={data_dir}", "trainer.epochs=2",
                         "trainer.batch_size=64", "logger.name=none", *overrides, f"hydra.run.dir={run_dir}",
                         cwd=tmp_path)
    return run_dir, out


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow   # two real runs each (the library-level equivalence suite runs in `make test`)
@pytest.mark.parametrize("backend, structure", [("csr", ()), ("condensed", ("sparsity.structure=fan_in",))])
def test_a_stored_run_makes_the_masked_runs_topology_decisions(tmp_path, data_dir, backend, structure):
    common = ("sparsity=rigl", "sparsity.sparsity=0.8", "sparsity.update_every=5", *structure)
    masked_dir, masked = _train(tmp_path, data_dir, "masked", *common)
    stored_dir, out = _train(tmp_path, data_dir, backend, *common, f"sparsity.backend={backend}")
    assert masked.returncode == 0 and out.returncode == 0, out.stderr[-2000:]
    assert (f"sparsity: backend {backend} stores Dense_0/kernel, Dense_1/kernel, Dense_2/kernel."
            in out.stdout.splitlines()[:3])
    assert f"sparsity: kernels {kernels.status()}" in out.stdout.splitlines()[:4]   # names the ISA in use
    assert "sparsity: rigl updates the stored layers from storage, one layer at a time." in out.stdout.splitlines()[:5]
    summary = json.loads((stored_dir / "summary.json").read_text())
    assert summary["backend"] == backend and set(json.loads(summary["stored_layers"])) == {
        "Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"}
    for a, b in zip(_records(stored_dir), _records(masked_dir), strict=True):
        assert a["topology/updates"] > 0
        for key in ("sparsity/global", "topology/dropped", "topology/grown", "itop_rate", "dead_units/total"):
            assert a[key] == b[key], key
        first_input = "activations/zero_fraction/Dense_0/kernel"     # the images: the same on both backends
        assert a[first_input] == pytest.approx(b[first_input])
        assert abs(a["test/accuracy"] - b["test/accuracy"]) <= 0.01
        assert abs(a["train/loss"] - b["train/loss"]) <= 1e-3


@pytest.mark.slow   # two real runs each
@pytest.mark.parametrize("name", ["snip", "grasp"])
def test_pruning_at_init_on_csr_stores_the_masked_runs_masks(tmp_path, data_dir, name):
    """SNIP and GraSP prune the dense model from training batches before the first step; on csr the layers are
    then stored with the pruned masks and train as the masked run does (same sparsities and dead units,
    losses within float tolerance)."""
    common = (f"sparsity={name}", "sparsity.sparsity=0.8")
    masked_dir, masked = _train(tmp_path, data_dir, "masked", *common)
    stored_dir, out = _train(tmp_path, data_dir, "csr", *common, "sparsity.backend=csr")
    assert masked.returncode == 0 and out.returncode == 0, out.stderr[-2000:]
    assert "sparsity: backend csr stores Dense_0/kernel, Dense_1/kernel, Dense_2/kernel." in out.stdout
    for a, b in zip(_records(stored_dir), _records(masked_dir), strict=True):
        for key in [k for k in b if k.startswith(("sparsity/", "dead_units/"))]:
            assert a[key] == b[key], key
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
        assert abs(a["test/accuracy"] - b["test/accuracy"]) <= 0.01


@pytest.mark.slow   # two real runs
def test_top_kast_on_csr_makes_the_masked_runs_decisions(tmp_path, data_dir):
    # Plain SGD: a weight that leaves the backward set and comes back restarts its moments on csr.
    common = ("sparsity=topkast", "sparsity.sparsity=0.8", "sparsity.backward_sparsity=0.6", "sparsity.update_every=5",
              "optimizer.momentum=0")
    masked_dir, masked = _train(tmp_path, data_dir, "masked", *common)
    stored_dir, out = _train(tmp_path, data_dir, "csr", *common, "sparsity.backend=csr")
    assert masked.returncode == 0 and out.returncode == 0, out.stderr[-2000:]
    assert ("sparsity: topkast ranks each stored layer's dense theta (its backward set's values written over the "
            "weights outside it), stores the new backward set and ranks the forward set among its slots."
            in out.stdout.splitlines()[:5])
    for a, b in zip(_records(stored_dir), _records(masked_dir), strict=True):
        assert a["topology/updates"] > 0
        for key in a:
            if key.startswith(("sparsity/", "topology/", "itop")):
                assert a[key] == b[key], key
        assert abs(a["train/loss"] - b["train/loss"]) <= 1e-4


@pytest.mark.parametrize("overrides, sentence", [
    (("sparsity.backend=coo",), "sparsity.backend must be one of masked, csr, condensed, dense, auto; got 'coo'."),
    (("sparsity.backend=dense",),
     "sparsity.backend=dense trains a plain dense model, so sparsity.algorithm must be dense; got rigl."),
    (("sparsity.backend=condensed",),
     "sparsity.backend=condensed holds a constant fan-in, so sparsity.structure must be fan_in or n_m; got "
     "unstructured."),
    (("sparsity=srigl", "sparsity.backend=condensed"),
     "sparsity.min_salient_fraction must be 0 with sparsity.backend=condensed: SRigL's ablation moves"),
    (("sparsity=snfs", "sparsity.backend=csr", "sparsity.capacity=0.5"),
     "sparsity.capacity must be a number in [1.0, 1000]; got 0.5."),
    (("sparsity.capacity=2",),
     "sparsity.capacity sets the slots of sparsity.backend=csr's stored layers (per starting weight), and this "
     "run's backend is masked; use csr or leave capacity null."),
    (("sparsity=gmp", "sparsity.backend=condensed", "sparsity.structure=fan_in"),
     "sparsity.backend=condensed keeps every unit's fan-in, and sparsity.algorithm=gmp changes layers' counts"),
    (("sparsity=topkast", "sparsity.backend=condensed", "sparsity.structure=fan_in"),
     "sparsity.backend=condensed keeps every unit's fan-in, and sparsity.algorithm=topkast trains a backward set"),
])
def test_what_a_backend_cannot_take_is_one_sentence(tmp_path, data_dir, overrides, sentence):
    run_dir, out = _train(tmp_path, data_dir, "bad", *(() if any(o.startswith("sparsity=") for o in overrides)
                                                       else ("sparsity=rigl",)), *overrides)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and sentence in lines[0], out.stderr
    assert not (run_dir / "summary.json").exists()


@pytest.mark.parametrize("overrides", [("sparsity=dense",), ("sparsity=static", "sparsity.sparsity=0")])
def test_a_csr_run_with_nothing_sparse_says_so_and_trains_masked(tmp_path, data_dir, overrides):
    run_dir, out = _train(tmp_path, data_dir, "dense_on_csr", *overrides, "sparsity.backend=csr", "trainer.epochs=1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert ("sparsity: backend csr stores no layer: every sparse layer starts dense (sparsity=dense, or a sparsity "
            "of 0), so the run trains them masked, as sparsity.backend=masked would." in out.stdout.splitlines()[:3])
    assert json.loads((run_dir / "summary.json").read_text())["sparsity/global"] == 0


@pytest.mark.slow   # two real runs (the HLO test below checks the step in `make test`)
def test_the_dense_backend_trains_the_dense_model_without_a_mask_in_the_step(tmp_path, data_dir):
    masked_dir, masked = _train(tmp_path, data_dir, "masked", "sparsity=dense")
    dense_dir, out = _train(tmp_path, data_dir, "dense", "sparsity=dense", "sparsity.backend=dense")
    assert masked.returncode == 0 and out.returncode == 0, out.stderr[-2000:]
    assert "sparsity: backend dense: a plain dense model, with no mask in the train step." in out.stdout
    for a, b in zip(_records(dense_dir), _records(masked_dir), strict=True):
        assert a["sparsity/global"] == 0.0
        assert abs(a["train/loss"] - b["train/loss"]) <= 1e-5 and abs(a["test/accuracy"] - b["test/accuracy"]) <= 1e-3


def test_the_dense_step_has_no_select():
    """No `where` (an HLO select) on a kernel in the dense backend's step; the masked step has them."""
    import jax
    import jax.numpy as jnp
    import optax

    import dst
    from dst.models import MLP
    from dst.train import stored

    model = MLP(hidden=(8,), num_classes=3)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
    masks = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    algo, tx = dst.algorithms.make("dense"), optax.sgd(0.1)
    batch = (jnp.ones((2, 4)), jnp.zeros((2,), jnp.int32))
    hlo = {}
    for name in ("dense", "masked"):
        storage = stored.make_storage(model, name, masks, dst.sparsifiable_layers(params))
        state = dst.create_train_state(jax.random.key(1), params, masks, tx, algo, storage=storage)
        step = dst.make_train_step(dst.flax_apply(model), tx, algo, storage=storage)
        hlo[name] = jax.jit(step.full).lower(state, batch).as_text()
    on_kernel = lambda text: [line for line in text.splitlines() if "select" in line and "tensor<4x8xf32>" in line]
    assert on_kernel(hlo["masked"]) and not on_kernel(hlo["dense"])


def test_a_layer_grown_past_its_capacity_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, data_dir):
    # SNFS moves weights between layers from its first update, at step 10 (the second epoch); at capacity 1
    # a layer that gains weights has no slot for them.
    run_dir, out = _train(tmp_path, data_dir, "snfs", "sparsity=snfs", "sparsity.sparsity=0.8", "sparsity.backend=csr",
                          "sparsity.capacity=1", "sparsity.update_every=5", "sparsity.start_step=10",
                          "trainer.epochs=3", "trainer.checkpoint_every_epochs=1")
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "above its capacity of" in lines[0] and "raise sparsity.capacity" in lines[0], out.stderr
    assert lines[0].startswith("error: layer Dense_")
    assert [r["epoch"] for r in _records(run_dir)] == [1]          # the epoch before is logged ...
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]   # ... and kept


@pytest.mark.slow   # two real runs each
@pytest.mark.parametrize("algorithm", ["rigl", "topkast"])
def test_a_conv_net_on_csr_makes_the_masked_runs_decisions(tmp_path, data_dir, algorithm):
    """LeNet-5 on csr: under RigL its convolution and fully connected layers are all stored (updated on their
    dense view); under Top-KAST its fully connected layers are stored and its convolution stays masked, both
    kinds updated in the same step (its sets ranked among the slots, and dense). Both make the masked run's
    decisions."""
    common = (f"sparsity={algorithm}", "sparsity.sparsity=0.8", "sparsity.update_every=5", "optimizer.momentum=0",
              *(("sparsity.backward_sparsity=0.6",) if algorithm == "topkast" else ()))
    runs = {}
    for backend in ("masked", "csr"):
        run_dir = tmp_path / backend
        out = dst_train_here("model=lenet5", "dataset=fashion_mnist", f"dataset.data_dir={data_dir}",
                             "trainer.epochs=2", "trainer.batch_size=64", "logger.name=none", *common,
                             f"sparsity.backend={backend}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        runs[backend] = (run_dir, out)
    first_lines = runs["csr"][1].stdout.splitlines()[:3]
    # The first convolution and the output layer are dense by default.
    stores = {"rigl": "sparsity: backend csr stores Conv_1/kernel, Dense_0/kernel, Dense_1/kernel.",
              "topkast": "sparsity: backend csr stores Dense_0/kernel, Dense_1/kernel; stay masked: Conv_1/kernel (a "
                         "backward set is stored for fully connected layers only)."}
    assert stores[algorithm] in first_lines
    for a, b in zip(_records(runs["csr"][0]), _records(runs["masked"][0]), strict=True):
        assert a["topology/updates"] > 0
        for key in ("sparsity/global", "topology/dropped", "topology/grown", "itop_rate", "dead_units/total"):
            assert a[key] == b[key], key
        assert abs(a["train/loss"] - b["train/loss"]) <= 1e-3
