"""The examples of docs/extending/ (the files under docs/examples/ that the pages include) do what the
pages say: the registered algorithm keeps its counts and updates on schedule, the user's model builds
from the config and trains, the sweep file composes into the documented jobs. The two runs through
``docs/examples/train.py`` are slow (real processes)."""

import importlib
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cli_helpers import ENV
from hydra import compose
from hydra import initialize_config_dir
from idx_data import write_dataset
from omegaconf import OmegaConf

import dst
from dst.algorithms import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXAMPLES = ROOT / "docs" / "examples"
SEARCHPATH = f"hydra.searchpath=[file://{EXAMPLES / 'conf'}]"


@pytest.fixture
def examples(monkeypatch):
    """docs/examples on the import path, its modules imported afresh, and a registry that forgets
    what they register when the test ends (other tests count the registered algorithms)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    for name in ("my_algorithm", "my_model"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    def load(name):
        module = importlib.import_module(name)
        monkeypatch.setitem(sys.modules, name, module)
        return module

    return load


def composed(*overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[SEARCHPATH, *overrides], return_hydra_config=hydra)
    return cfg if hydra else OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist")


# --- extending/algorithm.md ---------------------------------------------------------------------------

def _tiny_tree(seed=0):
    k_w, k_g = jax.random.split(jax.random.key(seed))
    params = {"layer": {"kernel": jax.random.normal(k_w, (16, 8)), "bias": jnp.ones(8)}}
    grads = {"layer": {"kernel": jax.random.normal(k_g, (16, 8)), "bias": jnp.ones(8)}}
    masks = dst.init_masks(jax.random.key(1), params, {"layer/kernel": 0.25})
    return dst.apply_masks(params, masks), masks, grads


def test_registered_algorithm_drops_by_saliency_and_grows_by_gradient(examples):
    examples("my_algorithm")
    assert "saliency_rigl" in dst.algorithms.names()
    algo = dst.algorithms.make("saliency_rigl", update_every=2, end_step=6, drop_fraction=0.5,
                               drop_schedule="constant")
    params, masks, grads = _tiny_tree()
    state = algo.init(params, masks)
    update = jax.jit(algo.update)
    w, g, m = (np.asarray(t["layer"]["kernel"]) for t in (params, grads, masks))
    n = int(m.sum())                                    # 32 of 128
    k = n // 2

    new_params, new_masks, state = update(state, jax.random.key(2), params, masks, grads)

    # Step 0 is an update: the k active weights of smallest |w * g| go, the k largest |g| among the
    # weights left inactive come in (continuous random values: no ties).
    saliency = np.where(m, np.abs(w * g), np.inf).ravel()
    kept = m.ravel().copy()
    kept[np.argsort(saliency)[:k]] = False
    grown = np.zeros_like(kept)
    grown[np.argsort(np.where(kept, -np.inf, np.abs(g).ravel()))[::-1][:k]] = True
    got = np.asarray(new_masks["layer"]["kernel"]).ravel()
    np.testing.assert_array_equal(got, kept | grown)
    np.testing.assert_array_equal(np.asarray(state.grown["layer"]["kernel"]).ravel(), grown)
    assert bool(state.updated) and int(state.step) == 1
    new_w = np.asarray(new_params["layer"]["kernel"]).ravel()
    assert np.all(new_w[~got] == 0) and np.all(new_w[grown] == 0)          # grow_init=zeros
    np.testing.assert_array_equal(new_w[kept], w.ravel()[kept])
    assert bool(np.all(new_masks["layer"]["bias"]))

    # Later steps (fresh gradients each): the topology changes at steps 2 and 4 only (update_every=2,
    # end_step=6), and the layer's count never changes.
    params, masks = new_params, new_masks
    changed = []
    for step in range(1, 9):
        previous = np.asarray(masks["layer"]["kernel"])
        grads = _tiny_tree(seed=step)[2]
        params, masks, state = update(state, jax.random.key(2 + step), params, masks, grads)
        now = np.asarray(masks["layer"]["kernel"])
        assert int(now.sum()) == n
        assert bool(state.updated) == (step in (2, 4))
        if not np.array_equal(now, previous):
            changed.append(step)
    assert changed == [2, 4]


def test_the_users_rules_make_the_masked_runs_decisions_on_csr(examples):
    """The example's drop and grow rules, written once, update stored layers from their slots (the
    saliency drop through the trainer's `select`): the masks after each of three updates are the masked
    run's, the params within 1e-5."""
    from dst.models import MLP
    from dst.train import stored

    examples("my_algorithm")
    algo = dst.algorithms.make("saliency_rigl", update_every=3, end_step=1000, drop_fraction=0.3)
    model = MLP(hidden=(48, 24), num_classes=8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32)))["params"]
    layers = dst.sparsifiable_layers(params)
    masks = dst.init_masks(jax.random.key(1), params, dst.layer_densities(params, 0.75, "erk"))
    x = jax.random.normal(jax.random.key(2), (9, 16, 32))
    # Half the inputs zero in every batch: half the first layer's saliencies tie at zero, more than it drops.
    x = jnp.where(jnp.arange(32) % 2 == 1, 0.0, x)
    y = jax.random.randint(jax.random.key(3), (9, 16), 0, 8)
    tx = optax.sgd(0.05, momentum=0.9)
    storage = stored.make_storage(model, "csr", masks, layers)
    assert stored.update_path(algo, storage)[0] == "from storage"
    masked_step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo).full)
    stored_step = jax.jit(dst.make_train_step(None, tx, algo, storage=storage).full)
    a = dst.create_train_state(jax.random.key(4), params, masks, tx, algo)
    b = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, storage=storage)
    for i in range(9):
        a, ma = masked_step(a, (x[i], y[i]))
        b, mb = stored_step(b, (x[i], y[i]))
        assert bool(mb["updated"]) == bool(ma["updated"]) == (i % 3 == 0)
        dense_p, dense_m = stored.expand_state(storage, b.params, b.live, b.topologies)
        jax.tree_util.tree_map(np.testing.assert_array_equal, dense_m, a.masks)
        jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, atol=1e-5), dense_p, a.params)
    assert not np.array_equal(np.asarray(dst.masks.named_leaves(a.masks)[layers[0]]),
                              np.asarray(dst.masks.named_leaves(masks)[layers[0]]))


def test_registered_algorithm_is_logged_by_its_own_accounting(examples):
    examples("my_algorithm")
    from dst import metrics

    mine = dst.algorithms.make("saliency_rigl", update_every=100, end_step=1000)
    rigl = dst.algorithms.make("rigl", update_every=100, end_step=1000)
    for step in (0, 500, 999, 1000):
        assert mine.drop_fraction_at(step) == rigl.drop_fraction_at(step)
        assert metrics.train_step_flops(mine, step, 10.0, 100.0) == metrics.train_step_flops(rigl, step, 10.0, 100.0)
    assert metrics.train_step_flops(mine, 5, 10.0, 100.0) > 30.0 == metrics.train_step_flops(mine, 1000, 10.0, 100.0)


def test_registered_algorithm_takes_its_config_file(examples):
    from dst.app.validate import ConfigError
    from dst.app.validate import algorithm_hparams
    from dst.app.validate import check_algorithm
    from dst.app.validate import validate

    cfg = composed("sparsity=saliency_rigl")
    with pytest.raises(ConfigError, match="sparsity.algorithm must be one of .*; got 'saliency_rigl'"):
        validate(cfg)                                   # not registered yet
    examples("my_algorithm")
    validate(cfg)
    assert algorithm_hparams(cfg["sparsity"], 1000)["end_step"] == 750       # end_fraction 0.75
    notes = []
    assert check_algorithm(cfg["sparsity"], 1000, notes.append) is not None and not notes
    # The default sparsity group (RigL's keys) with only the name changed works as well.
    assert check_algorithm(composed("sparsity.algorithm=saliency_rigl")["sparsity"], 1000, notes.append)
    assert not notes


# --- extending/model.md -------------------------------------------------------------------------------

def test_model_file_builds_the_users_module_with_the_datasets_classes(examples):
    from dst.app.build import make_model
    from dst.train.apply import model_state_shapes

    my_model = examples("my_model")
    cfg = composed("model=residual_mlp", "model.width=32")
    notes = []
    model = make_model(cfg["model"], num_classes=7, say=notes.append)
    assert isinstance(model, my_model.ResidualMLP) and not notes
    assert (model.width, model.blocks, model.num_classes, model.dropout) == (32, 2, 7, 0.0)
    params, model_state = model_state_shapes(model, jnp.zeros((1, 28, 28)))      # shapes only
    assert model_state == {} and params["head"]["kernel"].shape == (32, 7)
    kernels = {"embed/kernel", "block0_in/kernel", "block0_out/kernel", "block1_in/kernel", "block1_out/kernel",
               "head/kernel"}
    assert set(dst.sparsifiable_layers(params)) == kernels              # LayerNorm scales and biases stay dense
    densities = dst.layer_densities(params, 0.9, "erk")
    sizes = {n: leaf.size for n, leaf in dst.masks.named_leaves(params).items()}
    active = sum(dst.masks.active_count(d, sizes[n]) for n, d in densities.items())
    assert set(densities) == kernels and active == pytest.approx(0.1 * sum(sizes[n] for n in kernels), abs=len(kernels))


def test_model_target_on_the_command_line_leaves_out_what_it_does_not_take(examples):
    from dst.app.build import make_model

    examples("my_model")
    cfg = composed("model._target_=my_model.ResidualMLP", "model.name=residual_mlp", "+model.width=16",
                   "+model.hidden=[8]")
    notes = []
    model = make_model(cfg["model"], num_classes=10, say=notes.append)
    assert model.width == 16 and model.dropout == 0.0                 # lenet300's dropout key is taken
    assert notes == ["model: my_model.ResidualMLP takes no hidden; left out of its arguments."]


def test_users_model_passes_the_runs_checks_and_trains(examples, data_dir):
    from dst.app.run import prepare

    examples("my_model")
    cfg = composed("model=residual_mlp", "model.width=32", "model.blocks=1", "model.dropout=0.5", "sparsity=dense",
                   f"dataset.data_dir={data_dir}", "trainer.batch_size=64", "logger=none")
    plan = prepare(cfg, say=lambda msg: None)            # every check a run makes before it compiles
    assert plan.total_steps == 10 * 10 and plan.data.num_classes == 10
    tx = optax.adam(1e-2)

    @jax.jit   # one compile for the whole set-up (op by op, it costs seconds)
    def start(key):
        k_init, k_state = jax.random.split(key)
        params, model_state = dst.init_model(plan.model, k_init, jnp.zeros((1, 28, 28)))
        masks = dst.init_masks(k_init, params, {})       # dense: the sparse run is the slow test below
        return dst.create_train_state(k_state, params, masks, tx, plan.algo, model_state)

    state = start(jax.random.key(0))
    step = jax.jit(dst.make_train_step(dst.flax_apply(plan.model), tx, plan.algo).full)
    x, y = jnp.asarray(plan.data.train_x[:64]), jnp.asarray(plan.data.train_y[:64])
    losses = []
    for _ in range(10):
        state, metrics = step(state, (x, y))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    apply_fn = jax.jit(dst.flax_apply(plan.model), static_argnums=3)
    evaluated = [apply_fn(state.params, state.model_state, x, False, None)[0] for _ in range(2)]
    np.testing.assert_array_equal(evaluated[0], evaluated[1])        # no dropout in evaluation
    trained = [apply_fn(state.params, state.model_state, x, True, jax.random.key(k))[0] for k in range(2)]
    assert not np.array_equal(trained[0], trained[1])                # dropout from the step's key


# --- extending/sweep.md -------------------------------------------------------------------------------

def _sweep_jobs():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dst.app.grids import grid_jobs  # also registers hydra/sweeper=grids for compose()

    cfg = composed("+sweep=my_sweep", hydra=True)
    grids = [dict(g) for g in cfg.hydra.sweeper.grids]
    return cfg, grid_jobs(grids, [], OverridesParser.create().parse_overrides)


def test_sweep_file_is_the_dense_baseline_once_and_two_algorithms_at_two_sparsities():
    cfg, jobs = _sweep_jobs()
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.dst_grids.GridsSweeper"
    assert cfg.hydra.mode.name == "MULTIRUN" and list(cfg.trainer.seeds) == [0, 1] and cfg.trainer.epochs == 5
    assert cfg.logger.name == "none"
    cells = [tuple(sorted(j)) for j in jobs]
    assert cells == [("sparsity=dense",),
                     ("sparsity.sparsity=0.9", "sparsity=static"), ("sparsity.sparsity=0.95", "sparsity=static"),
                     ("sparsity.sparsity=0.9", "sparsity=rigl"), ("sparsity.sparsity=0.95", "sparsity=rigl")]


def test_every_job_of_the_sweep_is_a_valid_run():
    from dst.app.validate import check_algorithm
    from dst.app.validate import validate

    _, jobs = _sweep_jobs()
    for job in jobs:
        cfg = composed("+sweep=my_sweep", *job)
        validate(cfg)
        check_algorithm(cfg["sparsity"], 1000, say=lambda msg: None)
        assert cfg["trainer"]["seeds"] == [0, 1]
        assert cfg["sparsity"]["sparsity"] == (0.0 if "sparsity=dense" in job else cfg["sparsity"]["sparsity"])


def test_the_sparse_grid_is_the_documented_command_line_sweep():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    _, jobs = _sweep_jobs()
    parse = OverridesParser.create().parse_overrides
    # docs/extending/sweep.md: dst-train -m sparsity=static,rigl sparsity.sparsity=0.9,0.95 ...
    command = ["sparsity=static,rigl", "sparsity.sparsity=0.9,0.95"]
    product = BasicSweeper.split_arguments(parse(command), None)[0]
    assert sorted(tuple(sorted(j)) for j in product) == sorted(tuple(sorted(j)) for j in jobs[1:])


def test_a_command_line_sparsity_reaches_the_dense_grid_too():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dst.app.grids import grid_jobs
    from dst.app.validate import ConfigError
    from dst.app.validate import validate

    cfg, _ = _sweep_jobs()
    grids = [dict(g) for g in cfg.hydra.sweeper.grids]
    jobs = grid_jobs(grids, ["sparsity.sparsity=0.8"], OverridesParser.create().parse_overrides)
    assert sorted(jobs[0]) == ["sparsity.sparsity=0.8", "sparsity=dense"] and len(jobs) == 3
    with pytest.raises(ConfigError, match="sparsity.sparsity must be 0 with sparsity.algorithm=dense"):
        validate(composed("+sweep=my_sweep", *jobs[0]))
    validate(composed("+sweep=my_sweep", *jobs[1]))


# --- the examples through docs/examples/train.py, for real ---------------------------------------------

def _example_train(*overrides, cwd=ROOT, timeout=600):
    return subprocess.run([sys.executable, str(EXAMPLES / "train.py"), "hydra.searchpath=[file://docs/examples/conf]",
                           *overrides], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow   # a real run in a subprocess
def test_train_py_runs_the_registered_algorithm_on_the_users_model(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    out = _example_train("sparsity=saliency_rigl", "model=residual_mlp", "model.width=32", "sparsity.update_every=3",
                         f"dataset.data_dir={data_dir}", "trainer.epochs=2", "trainer.batch_size=64", "logger=none",
                         f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "finished" and summary["sparsity/global"] == pytest.approx(0.9, abs=0.005)
    # 2 epochs of 10 steps, end_step 0.75 * 20 = 15: updates at steps 0, 3, 6, 9, 12.
    assert records[0]["drop_fraction"] > 0 and sum(r["topology/updates"] for r in records) == 5
    assert records[0]["flops/train_relative"] > 0
    assert run_dir.name == "run" and "saliency_rigl_residual_mlp_fashion_mnist_s0" in out.stdout


@pytest.mark.slow   # five real jobs in a subprocess
def test_sweep_runs_every_job_and_reports_them(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    # One seed per job, not the file's two replicas in one program: the same jobs, compiled faster.
    out = _example_train("+sweep=my_sweep", "trainer.seeds=null", f"dataset.data_dir={data_dir}", "trainer.epochs=1",
                         "trainer.batch_size=64", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert runs == ["0_dense_lenet300_fashion_mnist_s0", "1_static_lenet300_fashion_mnist_s0",
                    "2_static_lenet300_fashion_mnist_s0", "3_rigl_lenet300_fashion_mnist_s0",
                    "4_rigl_lenet300_fashion_mnist_s0"], runs
    report = (sweep / "report.md").read_text()
    for row in ("| dense | 0.0 |", "| static | 0.9 | erk |", "| static | 0.95 | erk |", "| rigl | 0.9 | erk |",
                "| rigl | 0.95 | erk |"):
        assert row in report, row
