"""Layers born sparse (dst.train.born_sparse): created in storage from their counts, never dense.

Expectations come from the rules themselves on small layers: positions are uniform among all positions
(or within each unit under fan-in), counted over many draws; values follow the layer's initialiser law;
the leaves that are not born sparse are the model's own init; a born-sparse model trains as the masked
model with the same weights does; records read from the topologies equal those read from the dense view.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cli_helpers import dst_train_here
from hydra import compose
from hydra import initialize_config_dir
from idx_data import write_dataset
from omegaconf import OmegaConf

import dst
from dst import backends
from dst import metrics
from dst import structures
from dst.algorithms import make
from dst.app import records
from dst.app.run import initialise
from dst.app.run import prepare
from dst.app.run import run
from dst.app.sparse_setup import check_born_structure
from dst.app.validate import ConfigError
from dst.masks import named_leaves
from dst.models import MLP
from dst.train import born_sparse
from dst.train import create_train_state
from dst.train import make_train_step
from dst.train import stored

CONF = pathlib.Path(__file__).resolve().parents[1] / "conf"
SAMPLE = jnp.zeros((1, 12))
STRUCTURES = {"unstructured": structures.unstructured(), "fan_in": structures.fan_in(), "n_m": structures.n_m(1, 4)}


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def test_sample_absent_is_uniform_over_the_free_positions():
    rng = np.random.default_rng(0)
    present = np.array([2, 5, 11], np.int64)
    size, k, trials = 40, 6, 3000
    hits = np.zeros(size)
    for _ in range(trials):
        chosen = born_sparse.sample_absent(rng, present, size, k)
        assert chosen.size == k and np.all(np.diff(chosen) > 0) and not np.isin(chosen, present).any()
        hits[chosen] += 1
    free = np.setdiff1d(np.arange(size), present)
    expected = trials * k / free.size                      # each free position equally often
    assert np.all(hits[present] == 0)
    assert np.all(np.abs(hits[free] - expected) < 5 * np.sqrt(expected))
    assert born_sparse.sample_absent(rng, np.array([2, 5]), 8, 6).tolist() == [0, 1, 3, 4, 6, 7]
    with pytest.raises(ValueError, match="free positions"):
        born_sparse.sample_absent(rng, np.array([2, 5]), 8, 7)


def test_er_count_is_epsilon_times_fan_in_plus_fan_out():
    assert born_sparse.er_count((784, 1000), 20) == 35680 and born_sparse.er_count((1000, 10), 20) == 10000


@pytest.mark.parametrize("structure", [structures.unstructured(), structures.fan_in(), structures.n_m(2, 4)],
                         ids=lambda s: s.name)
def test_positions_are_distinct_in_csr_order_and_uniform(structure):
    shape, count, trials = (8, 4), 16, 3000
    rng = np.random.default_rng(1)
    hits = np.zeros(shape[::-1])
    for _ in range(trials):
        cols, units = born_sparse.draw_positions(rng, shape, count, structure)
        keys = units.astype(np.int64) * shape[0] + cols
        assert keys.size == count and np.all(np.diff(keys) > 0)          # distinct, by unit then input
        if structure.name != "unstructured":
            assert np.bincount(units, minlength=shape[1]).tolist() == [4] * 4
        if structure.name == "n_m":                                       # 2 of each unit's inputs 0-3 and 4-7
            assert np.bincount(units * 2 + cols // 4, minlength=8).tolist() == [2] * 8
        hits[units, cols] += 1
    expected = trials * count / hits.size                                # every position equally often
    assert np.all(np.abs(hits - expected) < 5 * np.sqrt(expected)), hits
    with pytest.raises(ValueError, match="block"):
        born_sparse.draw_positions(rng, shape, count, structures.block(2, 2))
    with pytest.raises(ValueError, match="2:4"):
        born_sparse.draw_positions(rng, (6, 4), 12, structures.n_m(2, 4))   # 6 inputs: not whole groups of 4


def test_n_m_positions_are_drawn_a_block_of_units_at_a_time(monkeypatch):
    """Units drawn in several blocks take the same law: every unit's groups hold N each, and units differ."""
    monkeypatch.setattr(born_sparse, "DRAW_BLOCK", 24)       # 3 units of 8 inputs per block
    cols, units = born_sparse.draw_positions(np.random.default_rng(0), (8, 10), 40, structures.n_m(1, 2))
    assert np.bincount(units * 4 + cols // 2, minlength=40).tolist() == [1] * 40
    assert len({tuple(cols[units == u]) for u in range(10)}) > 1


def test_init_values_follow_the_fan_in_law():
    values = born_sparse.init_values(jax.random.key(0), jax.nn.initializers.lecun_normal(), (400, 10**6), 50_000)
    assert values.shape == (50_000,)
    assert float(jnp.std(values)) == pytest.approx(1 / np.sqrt(400), rel=0.03)   # LeCun: Var = 1 / fan_in


def test_kernel_initializers_are_read_from_the_model():
    inits = born_sparse.kernel_initializers(MLP(hidden=(6,), hidden_std=0.5), SAMPLE)
    assert set(inits) == {"Dense_0/kernel", "Dense_1/kernel"}
    w = inits["Dense_0/kernel"](jax.random.key(0), (200, 300), jnp.float32)
    assert float(jnp.std(w)) == pytest.approx(0.5, rel=0.02)          # hidden_std, not LeCun's 1/sqrt(200)


def born(model, densities, layers, algo, tx, backend="csr", structure="unstructured"):
    keys = tuple(jax.random.split(jax.random.key(0), 3))
    return born_sparse.init_state(keys, 0, model, SAMPLE, densities, layers, backend=backends.make(backend), tx=tx,
                                  algo=algo, structure=STRUCTURES[structure])


def _born_algorithm(name, structure="unstructured"):
    """``name`` updating at least twice in 4 steps: GMP and GraNet pruning from 75% towards 90%, MEST decaying."""
    if name in ("gmp", "granet"):
        return make(name, sparsity=0.9, initial_sparsity=0.75, update_every=1, start_step=1, end_step=4,
                    **({"drop_fraction": 0.3} if name == "granet" else {}))
    if name == "mest_decay":
        return make("mest", sparsity=0.9, initial_sparsity=0.75, update_every=2, start_step=1, end_step=100,
                    decay_end_step=4, drop_fraction=0.3)
    if name == "srigl":
        return make(name, update_every=2, start_step=1, end_step=100, min_salient_fraction=0.9)
    kept = {} if structure == "unstructured" else {"structure": STRUCTURES[structure]}
    return make(name, **({} if name == "static" else {"update_every": 2, "start_step": 1, "end_step": 100}), **kept)


@pytest.mark.parametrize("backend, structure, name", [
    ("csr", "unstructured", "static"), ("condensed", "fan_in", "static"), ("csr", "unstructured", "rigl"),
    # Counts that fall: pruned in place (GMP), then regrown from storage (GraNet), or decayed from storage (MEST);
    # `make test` runs GraNet (both), `make test-slow` the other two.
    pytest.param("csr", "unstructured", "gmp", marks=pytest.mark.slow), ("csr", "unstructured", "granet"),
    pytest.param("csr", "unstructured", "mest_decay", marks=pytest.mark.slow),
    # SRigL from storage, its neurons ablated (gamma 0.9) on fan-in layers born sparse.
    ("csr", "fan_in", "srigl"),
    # N:M drawn per group and kept by RigL's updates from storage, on both backends.
    ("condensed", "n_m", "rigl"), pytest.param("csr", "n_m", "set", marks=pytest.mark.slow)])
def test_a_born_sparse_model_trains_as_the_masked_model_with_its_weights(backend, structure, name):
    model = MLP(hidden=(24, 16), num_classes=5)
    x = jax.random.normal(jax.random.key(1), (8, 12))
    y = jnp.arange(8) % 5
    tx = optax.sgd(0.1, momentum=0.9)
    static = _born_algorithm(name, structure)
    densities = {"Dense_0/kernel": 0.25, "Dense_1/kernel": 0.25}
    storage, state = born(model, densities, list(densities), static, tx, backend, structure)
    params, masks = stored.expand_state(storage, state.params, state.live, state.topologies)
    counts = {n: int(m.sum()) for n, m in named_leaves(masks).items() if n in densities}
    assert counts == {"Dense_0/kernel": 72, "Dense_1/kernel": 96}
    # The other leaves are the model's own init from the same key.
    k_init = jax.random.split(jax.random.key(0), 3)[0]
    own, _ = dst.init_model(model, k_init, SAMPLE)
    for leaf in ("Dense_2/kernel", "Dense_0/bias", "Dense_2/bias"):
        np.testing.assert_array_equal(named_leaves(params)[leaf], named_leaves(own)[leaf])
    masked = create_train_state(state.rng, params, masks, tx, static)   # the same chain of keys (MEST grows at random)
    masked_step = jax.jit(make_train_step(lambda p, s, x, t, r: (model.apply({"params": p}, x), s), tx,
                                          static).full)
    stored_step = jax.jit(make_train_step(None, tx, static, storage=storage).full)
    updates = 0
    for _ in range(4):
        masked, ma = masked_step(masked, (x, y))
        state, mb = stored_step(state, (x, y))
        updates += int(ma["updated"])
        assert bool(mb["updated"]) == bool(ma["updated"])
    got, got_masks = stored.expand_state(storage, state.params, state.live, state.topologies)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got_masks, masked.masks)
    for leaf, want in named_leaves(masked.params).items():
        np.testing.assert_allclose(named_leaves(got)[leaf], want, rtol=1e-5, atol=1e-6)
    if name != "static":
        assert updates >= 2 and not np.array_equal(named_leaves(masked.masks)["Dense_0/kernel"],
                                                   named_leaves(masks)["Dense_0/kernel"])
    if name == "srigl":   # units ablated, the same ones; its report from the topologies as from the masks
        jax.tree_util.tree_map(np.testing.assert_array_equal, state.algo_state.extra["ablated"],
                               masked.algo_state.extra["ablated"])
        assert any(int(np.sum(u)) > 0 for u in masked.algo_state.extra["ablated"].values())
        _, units = stored.record_view(storage, state)
        assert static.report(state.algo_state, state.live, units) == static.report(masked.algo_state, masked.masks)
    if name in ("gmp", "granet", "mest_decay"):   # the counts fell, into padding
        assert int(named_leaves(got_masks)["Dense_0/kernel"].sum()) < counts["Dense_0/kernel"]


def test_records_from_the_topologies_equal_those_of_the_dense_view():
    """Densities and dead units read from the slots' unit counts, as from the expanded masks; a unit left
    without inputs (all its weights dropped by hand) counts as dead both ways."""
    model = MLP(hidden=(10, 8), num_classes=3)
    densities = {"Dense_0/kernel": 0.2, "Dense_1/kernel": 0.15}
    storage, state = born(model, densities, list(densities), make("static"), optax.sgd(0.1))
    slots = named_leaves(state.live)
    view = storage.backend.slots(named_leaves(state.params)["Dense_0/kernel"], slots["Dense_0/kernel"],
                                 state.topologies["Dense_0/kernel"], storage.layout_of["Dense_0/kernel"])
    cut = slots["Dense_0/kernel"] & (view.units != view.units[0])       # the first unit loses every input
    state = state._replace(live=dst.masks.replace_named(state.live, {"Dense_0/kernel": cut}))
    pairs = [("Dense_0/kernel", "Dense_1/kernel"), ("Dense_1/kernel", "Dense_2/kernel")]
    layers = ["Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"]
    _, counts = stored.record_view(storage, state)
    dense = stored.dense_view(storage, state)
    assert records.density_report(state.live, layers, counts) == pytest.approx(dst.density_report(dense.masks,
                                                                                                   layers))
    by_counts = metrics.dead_units(state.live, pairs, counts)
    assert by_counts == metrics.dead_units(dense.masks, pairs) and by_counts["Dense_0/kernel"] >= 1


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist", n_train=256)


def test_dst_train_runs_born_sparse_from_the_command_line(tmp_path, data_dir, capsys):
    said = []
    cfg = composed("sparsity=set", "sparsity.distribution=er", "sparsity.epsilon=4", "sparsity.backend=csr",
                   "sparsity.born_sparse=true", "sparsity.update_every=2", "model=mlp", "model.hidden=[64,32]",
                   f"dataset.data_dir={data_dir}", "logger=none", "trainer.epochs=1", "trainer.batch_size=32")
    plan = prepare(cfg, said.append)
    parts = initialise(plan)
    assert parts.storage.born_sparse and parts.storage.dense_metrics       # ITOP where it fits: 10^5 positions
    _, born_masks = stored.expand_state(parts.storage, parts.state.params, parts.state.live, parts.state.topologies)
    jax.tree_util.tree_map(np.testing.assert_array_equal, parts.state.ever_active, born_masks)   # the born positions
    counts = {n: lay.count for n, lay in parts.storage.layout_of.items()}
    assert counts == {"Dense_0/kernel": 4 * (784 + 64), "Dense_1/kernel": 4 * (64 + 32),
                      "Dense_2/kernel": 4 * (32 + 10)}
    capsys.readouterr()
    summary = run(cfg, tmp_path / "run")
    assert "sparsity: set updates the stored layers from storage, one layer at a time." in capsys.readouterr().out
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["topology/updates"] >= 2 and record["topology/grown/Dense_1/kernel"] > 0
    assert record["sparsity/Dense_1/kernel"] == pytest.approx(1 - 4 * 96 / (64 * 32))     # the count kept
    assert "dead_units/Dense_0/kernel" in record
    # Regrowth explores: more positions were ever active than any one topology holds (ER's counts in 784-64-32-10).
    assert record["itop_rate"] > 4 * (784 + 64 + 64 + 32 + 32 + 10) / (784 * 64 + 64 * 32 + 32 * 10)
    assert summary["test/accuracy"] == record["test/accuracy"]


@pytest.mark.slow   # one RigL update of a 65,536 x 65,537 layer: its gradient in 257 blocks (about 25 s here)
def test_rigl_grows_by_gradient_on_a_layer_of_2_to_the_32_positions(tmp_path, data_dir):
    """A layer of 2^32+ positions (4,295,032,832) born sparse, updated in the step by RigL's gradient growth:
    its 32-bit positions wrap, and each weight's input breaks the ties their repeated priorities leave."""
    cfg = composed("sparsity=rigl", "sparsity.distribution=er", "sparsity.epsilon=1", "sparsity.backend=csr",
                   "sparsity.update_every=2", "model=mlp", "model.hidden=[65536,65537]", f"dataset.data_dir={data_dir}",
                   "logger=none", "trainer.epochs=1", "trainer.max_steps=3", "trainer.batch_size=32")
    run(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    count = 65536 + 65537                                              # ER, epsilon 1
    assert record["topology/updates"] == 1
    assert record["topology/grown/Dense_1/kernel"] == record["topology/dropped/Dense_1/kernel"] > count // 4
    assert record["sparsity/Dense_1/kernel"] == pytest.approx(1 - count / (65536 * 65537))   # the count kept
    assert "itop_rate" not in record          # 4.3e9 positions: no ever-active set above DENSE_METRICS_LIMIT


@pytest.mark.parametrize("overrides, sentence", [
    (("sparsity.born_sparse=true",), "sparsity.born_sparse=true creates the sparse layers in csr or condensed storage, "
                                     "and this run's sparsity.backend is masked; use csr or condensed."),
    (("sparsity=gmp", "sparsity.backend=csr", "sparsity.born_sparse=true"),
     "sparsity.born_sparse=true creates the sparse layers from their counts, and this run starts every fully "
     "connected layer dense; set sparsity.initial_sparsity above 0"),
    (("sparsity=snfs", "sparsity.backend=csr", "sparsity.born_sparse=true"),
     "a born-sparse run's layers never exist dense, and sparsity.algorithm=snfs cannot run so: it keeps a dense "
     "state of every weight"),
    (("sparsity=imp", "sparsity.backend=csr", "sparsity.born_sparse=true"),
     "a born-sparse run's layers never exist dense, and sparsity.algorithm=imp cannot run so: its levels rewind"),
    (("sparsity=set", "sparsity.backend=csr", "sparsity.born_sparse=true", "sparsity.structure=block",
      "sparsity.block=[2,2]"),
     "sparsity.structure=block ranks whole blocks across output units on a layer's dense form, which a born-sparse "
     "layer never has; born-sparse layers take unstructured, fan_in, n_m"),
    (("sparsity.born_sparse=maybe",), "sparsity.born_sparse must be one of auto, true, false; got 'maybe'."),
])
def test_bad_born_sparse_settings_are_one_sentence(tmp_path, data_dir, overrides, sentence):
    out = dst_train_here(*overrides, f"dataset.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}",
                         "logger=none", cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and sentence in lines[0], out.stderr


def test_a_born_sparse_layer_the_structure_leaves_dense_is_refused_where_its_dense_form_does_not_fit():
    sp = {"structure": "n_m", "n_m": [2, 4]}
    undivided = {"Dense_1/kernel": "its reduction dimension 333334 is not a multiple of M=4"}
    shapes = {"Dense_0/kernel": (784, 333334), "Dense_1/kernel": (333334, 333334)}
    sentence = (r"^born sparse, layer Dense_1/kernel cannot take sparsity.structure=n_m: its reduction "
                r"dimension 333334 is not a multiple of M=4, so the structure leaves it dense, "
                r"and its dense form \(111,111,555,556 weights\) does not fit; use a shape "
                r"the structure divides or sparsity.structure=unstructured.$")
    with pytest.raises(ConfigError, match=sentence):
        check_born_structure(sp, undivided, shapes, budget=2**30)
    small = {"Dense_1/kernel": (334, 10)}        # a small layer left dense fits: it stays a masked dense kernel
    check_born_structure(sp, {"Dense_1/kernel": "its reduction dimension 334 is not a multiple of M=4"}, small, 2**30)
