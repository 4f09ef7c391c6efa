"""Lottery tickets (sparsity=imp): the pruning rule on hand-made layers, rewinding through the real
train step, the controls, and whole runs through the CLI (levels in records and summary, resume across
and inside levels, bad settings).

The worked examples come from open_lth's ``sparse_global`` rule read by hand (prune exactly
``ceil(0.2 n)`` of the ``n`` remaining weights, smallest ``|w|`` first)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cli_helpers import dst_train_here
from idx_data import write_dataset

import dst
from dst.algorithms.imp import pruned_counts
from dst.masks import named_leaves

A = np.array([[0.9, -0.1, 0.5], [0.3, -0.7, 0.2]], np.float32)
B = np.array([[-0.05, 0.8, 0.4], [0.6, -0.25, 1.0]], np.float32)


def _level(algo, params, masks, start=None):
    state = algo.init(params, masks)
    start = params if start is None else start
    p, m, s = algo.next_level(state, jax.random.key(0), params, masks, lambda: start)
    return p, {n: np.asarray(x).astype(int).tolist() for n, x in named_leaves(m).items()}, s


def _ab():
    params = {"a": {"kernel": jnp.asarray(A)}, "b": {"kernel": jnp.asarray(B)}}
    return params, jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)


def test_counts_prune_the_ceiling_of_the_fraction_of_what_remains():
    assert pruned_counts({"a": 6, "b": 6}, 0.2, "global") == 9            # ceil(2.4) = 3 pruned
    assert pruned_counts({"a": 6, "b": 6}, 0.2, "layer") == {"a": 4, "b": 4}
    assert pruned_counts({"a": 9}, 0.2, "global") == 7                    # ceil(1.8) = 2


def test_global_levels_prune_the_smallest_magnitudes_over_all_layers():
    params, masks = _ab()
    algo = dst.algorithms.make("imp", levels=2, scope="global")
    p1, m1, s1 = _level(algo, params, masks)
    assert m1 == {"a/kernel": [[1, 0, 1], [1, 1, 0]], "b/kernel": [[0, 1, 1], [1, 1, 1]]}
    # level 2 from the same magnitudes: 9 remain, ceil(1.8) = 2 more go (.25 and .3)
    as_masks = {"a": {"kernel": jnp.asarray(np.array(m1["a/kernel"], bool))},
                "b": {"kernel": jnp.asarray(np.array(m1["b/kernel"], bool))}}
    _, m2, _ = _level(algo, params, as_masks)
    assert m2 == {"a/kernel": [[1, 0, 1], [0, 1, 0]], "b/kernel": [[0, 1, 1], [1, 0, 1]]}
    assert int(s1.extra["level"]) == 1 and int(s1.step) == 0


def test_layer_scope_prunes_each_layer_on_its_own():
    params, masks = _ab()
    _, m1, _ = _level(dst.algorithms.make("imp", levels=1, scope="layer"), params, masks)
    assert m1 == {"a/kernel": [[1, 0, 1], [1, 1, 0]], "b/kernel": [[0, 1, 1], [1, 0, 1]]}


def test_start_weights_are_the_rewound_ones_or_a_fresh_init_and_random_prune_keeps_counts():
    params, masks = _ab()
    rewound = jax.tree_util.tree_map(lambda p: p * 10, params)
    algo = dst.algorithms.make("imp", levels=1, scope="global")
    state = algo.init(rewound, masks)          # init records the weights to rewind to (rewind_step 0)
    p, m, _ = algo.next_level(state, jax.random.key(0), params, masks, None)
    np.testing.assert_array_equal(np.asarray(p["a"]["kernel"]), np.where(np.asarray(m["a"]["kernel"]), A * 10, 0))
    fresh = jax.tree_util.tree_map(lambda x: x + 100.0, params)
    reinit = dst.algorithms.make("imp", levels=1, control="random_reinit")
    p, m, _ = reinit.next_level(reinit.init(params, masks), jax.random.key(0), params, masks, lambda: fresh)
    np.testing.assert_array_equal(np.asarray(p["b"]["kernel"]), np.where(np.asarray(m["b"]["kernel"]), B + 100, 0))
    # random_prune: a uniformly random mask with the lottery's per-layer counts (4 of A, 5 of B), new each draw
    shuffled = dst.algorithms.make("imp", levels=1, control="random_prune")
    state = shuffled.init(params, masks)
    draws = [shuffled.next_level(state, jax.random.key(s), params, masks, None)[1] for s in range(4)]
    for draw in draws:
        assert {n: int(np.sum(x)) for n, x in named_leaves(draw).items()} == {"a/kernel": 4, "b/kernel": 5}
    assert len({np.asarray(d["a"]["kernel"]).tobytes() for d in draws}) > 1


def test_structured_levels_keep_the_structure():
    w = jnp.asarray(np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32))
    params, masks = {"l": {"kernel": w}}, {"l": {"kernel": jnp.ones((8, 6), bool)}}
    for structure, check in ((dst.structures.fan_in(), lambda m: set(m.sum(axis=0)) == {6}),
                             (dst.structures.n_m(2, 4), lambda m: set(m.reshape(2, 4, 6).sum(axis=1).ravel()) == {2}),
                             (dst.structures.block(2, 2), lambda m: set(m.reshape(4, 2, 3, 2).sum(axis=(1, 3)).ravel())
                              <= {0, 4})):
        algo = dst.algorithms.make("imp", levels=1, scope="layer", structure=structure)
        _, m, _ = _level(algo, params, masks)
        assert check(np.asarray(m["l/kernel"])), structure.name
    with pytest.raises(ValueError, match="scope=global cannot keep structure=fan_in"):
        dst.algorithms.make("imp", levels=1, structure=dst.structures.fan_in())


def test_the_rewind_weights_are_those_after_rewind_step_optimizer_steps():
    from algo_helpers import tiny_problem
    model, params, x, y = tiny_problem()
    algo = dst.algorithms.make("imp", levels=1, rewind_step=3)
    tx = optax.sgd(0.1, momentum=0.9)
    masks = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    state = dst.create_train_state(jax.random.key(0), params, masks, tx, algo)
    step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo))
    history = [state.params]
    for i in range(6):
        state, _ = step(state, (x[32 * i:32 * (i + 1)], y[32 * i:32 * (i + 1)]))
        history.append(state.params)
    for got, want in zip(jax.tree_util.tree_leaves(state.algo_state.extra["rewind"]),
                         jax.tree_util.tree_leaves(history[3])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("settings, sentence", [
    ({"levels": 0}, "levels must be an integer of at least 1"),
    ({"levels": 2, "prune_fraction": 1.0}, "prune_fraction must be in (0, 1); got 1.0."),
    ({"levels": 2, "scope": "net"}, "scope must be one of global, layer; got 'net'."),
    ({"levels": 2, "control": "shuffle"}, "control must be one of none, random_prune, random_reinit; got 'shuffle'."),
])
def test_bad_imp_settings_are_one_sentence(settings, sentence):
    with pytest.raises(ValueError, match="^" + sentence.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        dst.algorithms.make("imp", **settings)


# --- whole runs through the CLI ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist", n_train=320, n_test=100)


def _imp(tmp_path, data_dir, run_dir, *overrides):
    return dst_train_here("sparsity=imp", "sparsity.levels=2", "model=mlp", "model.hidden=[20,12]",
                          "dataset=fashion_mnist", f"dataset.data_dir={data_dir}", "trainer.epochs=2",
                          "trainer.batch_size=64", "logger.name=none", "trainer.keep_checkpoints=10", *overrides,
                          f"hydra.run.dir={run_dir}", cwd=tmp_path)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


WALL = ("wall_time", "time/elapsed", "steps_per_sec", "run_dir")


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory, data_dir):
    tmp_path = tmp_path_factory.mktemp("imp")
    run_dir = tmp_path / "whole"
    out = _imp(tmp_path, data_dir, run_dir, "sparsity.rewind_step=2")
    assert out.returncode == 0, out.stderr[-2000:]
    return run_dir


def test_an_imp_run_records_levels_and_summarises_each(imp_run, tmp_path):
    run_dir = imp_run
    records = _records(run_dir)
    # 5 steps per epoch, 10 per level: level 0 is 5 + 5 steps, each later level 3 + 5 (from step 2).
    assert [(r["level"], r["level_epoch"], r["step"], r["level_step"]) for r in records] == [
        (0, 1, 5, 5), (0, 2, 10, 10), (1, 1, 13, 5), (1, 2, 18, 10), (2, 1, 21, 5), (2, 2, 26, 10)]
    summary = json.loads((run_dir / "summary.json").read_text())
    sizes = 784 * 20 + 20 * 12 + 12 * 10
    assert summary["level/0/density"] == 1.0
    assert summary["level/1/density"] == pytest.approx((sizes - int(np.ceil(0.2 * sizes))) / sizes)
    assert summary["level/2/best_test_accuracy"] == max(r["test/accuracy"] for r in records if r["level"] == 2)
    from dst.report import collect_runs
    from dst.report.write import write_report
    report, _ = write_report(collect_runs([run_dir]), tmp_path / "report")
    text = report.read_text()
    assert "## Lottery tickets: test accuracy (%) by level" in text
    assert f"| imp mlp fashion_mnist | 1 | {summary['level/1/density']:.4f} |" in text
    assert (tmp_path / "report" / "lottery_levels.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("resume_after", [2, 3])   # the end of level 0 (across levels), inside level 1
def test_an_imp_run_resumes_across_and_inside_levels(imp_run, tmp_path, data_dir, resume_after):
    records = _records(imp_run)
    again = tmp_path / f"resumed_{resume_after}"
    shutil.copytree(imp_run, again)
    for ckpt in (again / "checkpoints").iterdir():
        if ckpt.name.isdigit() and int(ckpt.name) > resume_after:
            shutil.rmtree(ckpt)
    (again / "summary.json").unlink()
    out = _imp(tmp_path, data_dir, again, "sparsity.rewind_step=2")
    assert out.returncode == 0 and "resuming from" in out.stdout, out.stderr[-2000:]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in WALL} for r in rs]
    assert strip(_records(again)) == strip(records)


@pytest.mark.parametrize("overrides, sentence", [
    (("sparsity.levels=0",), "sparsity.levels must be an integer of at least 1"),
    (("sparsity.rewind_step=10",), "sparsity.rewind_step must be less than the run's 10 steps per level"),
    (("sparsity.structure=fan_in",), "sparsity.scope=global cannot keep structure=fan_in"),
])
def test_bad_imp_runs_are_one_sentence(tmp_path, data_dir, overrides, sentence):
    out = _imp(tmp_path, data_dir, tmp_path / "bad", *overrides)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and sentence in lines[0], out.stderr


@pytest.mark.slow
def test_imp_replicas_in_one_program_match_their_single_runs(tmp_path, data_dir):
    seeds_dir, single_dir = tmp_path / "seeds", tmp_path / "single"
    out = _imp(tmp_path, data_dir, seeds_dir, "sparsity.levels=1", "trainer.seeds=[0,1]")
    assert out.returncode == 0, out.stderr[-2000:]
    out = _imp(tmp_path, data_dir, single_dir, "sparsity.levels=1", "trainer.seed=1")
    assert out.returncode == 0, out.stderr[-2000:]
    replica = _records(seeds_dir / "seed_1")
    single = _records(single_dir)
    assert [r["level"] for r in replica] == [0, 0, 1, 1]
    for a, b in zip(replica, single):
        assert a["sparsity/global"] == b["sparsity/global"] and a["step"] == b["step"]
        assert a["test/accuracy"] == pytest.approx(b["test/accuracy"], abs=0.02)


@pytest.mark.slow
def test_an_imp_run_on_csr_prunes_its_levels_as_the_masked_run(imp_run, tmp_path, data_dir):
    """Each level prunes the dense view of the stored layers and stores them again in the same capacity
    (the pruned weights' slots become padding): the same densities, steps and, to the kernels' summation
    order, the same accuracy as the masked run."""
    run_dir = tmp_path / "csr"
    out = _imp(tmp_path, data_dir, run_dir, "sparsity.rewind_step=2", "sparsity.backend=csr")
    assert out.returncode == 0, out.stderr[-2000:]
    for a, b in zip(_records(run_dir), _records(imp_run), strict=True):
        assert (a["level"], a["step"], a["sparsity/global"]) == (b["level"], b["step"], b["sparsity/global"])
        assert a["test/accuracy"] == pytest.approx(b["test/accuracy"], abs=0.02)
