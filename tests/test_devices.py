"""Data parallelism on 4 forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, in
subprocesses: the flag must be set before JAX starts): masks equal a single-device run's after the same
steps, metrics match within tolerance, summary.json records the devices, bad batch sizes are refused."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from cli_helpers import forced_devices
from idx_data import write_dataset

import dst

FOUR = forced_devices(4)

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np, optax
    import dst
    from algo_helpers import start_state
    from dst.train.devices import DataParallel

    assert len(jax.devices()) == 4
    out = {{}}
    for name in dst.algorithms.names():
        model, x, y, algo, tx, start = start_state(name, update_every=3, end_step=20)
        step = dst.make_train_step(dst.flax_apply(model), tx, algo)
        dp = DataParallel()
        one, many = dst.train_epoch_fn(step, 32), dst.train_epoch_fn(step, 32, batch_sharding=dp.batch)
        a, b = start, dp.replicate(start)
        for e in range(2):
            (a, ma), (b, mb) = one(a, x, y, jax.random.key(e)), many(b, dp.replicate(x), dp.replicate(y),
                                                                   jax.random.key(e))
        masks_equal = all(np.array_equal(np.asarray(u), np.asarray(v))
                          for u, v in zip(jax.tree_util.tree_leaves(a.masks), jax.tree_util.tree_leaves(b.masks)))
        err = max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
                  for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)))
        loss = float(np.max(np.abs(np.asarray(ma["loss"]) - np.asarray(mb["loss"]))))
        spread = len(b.params["Dense_0"]["kernel"].sharding.device_set)
        out[name] = dict(masks_equal=masks_equal, param_err=err, loss_err=loss, devices=spread,
                         updates=int(np.sum(np.asarray(mb["updated"]))), dynamic=algo.dynamic and not algo.levels,
                         single_updates=int(np.sum(np.asarray(ma["updated"]))))
    # Evaluation splits each chunk over the devices (30 rows round up to 32) and gives the same numbers.
    apply = dst.flax_apply(model)
    plain = dst.evaluate_fn(apply, 30)(a.params, a.model_state, x[:250], y[:250])
    split = dst.evaluate_fn(apply, 30, dp.batch)(dp.replicate(a.params), dp.replicate(a.model_state),
                                                 dp.replicate(x[:250]), dp.replicate(y[:250]))
    out["evaluation"] = {{k: abs(float(plain[k]) - float(split[k])) for k in plain}}
    print(__import__("json").dumps(out))
""")


@pytest.mark.slow   # a real multi-process run (20-45 s): `make test-slow`, which .ci/run runs too
def test_four_devices_keep_the_masks_of_one_device():
    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests)], capture_output=True, text=True,
                         env=FOUR, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results.pop("evaluation") == {"loss": pytest.approx(0, abs=1e-5), "accuracy": pytest.approx(0, abs=1e-6)}
    assert sorted(results) == sorted(dst.algorithms.names())    # the suite's sharding variant: every algorithm
    for name, r in results.items():
        assert r["masks_equal"], name
        assert r["updates"] == r["single_updates"] and r["devices"] == 4, name
        if r["dynamic"]:   # (IMP's topology changes between levels, not within the epoch run here)
            assert r["updates"] == 3, name      # steps 9, 12, 15 of the second epoch
        assert r["param_err"] < 1e-5 and r["loss_err"] < 1e-5, (name, r)


@pytest.mark.slow
def test_the_cli_records_its_devices_and_refuses_an_indivisible_batch(tmp_path):
    data = write_dataset(tmp_path / "fashion_mnist")
    common = [sys.executable, "-m", "dst.train", f"dataset.data_dir={data}", "trainer.epochs=1", "logger=none"]
    ok = subprocess.run([*common, "trainer.batch_size=64", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                        env=FOUR, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["devices"] == 4
    bad = subprocess.run([*common, "trainer.batch_size=66", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path,
                         env=FOUR, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("error: trainer.batch_size must be divisible by the 4 devices the run uses; "
                                  "got 66 (use a multiple of 4).")


STORED_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    import dst
    from algo_helpers import initial_masks, make_algorithm, tiny_problem, OPTIMIZERS
    from dst.train import stored
    from dst.train.devices import DataParallel

    assert len(jax.devices()) == 4
    model, params, x, y = tiny_problem()
    dp, out = DataParallel(), {{}}
    fan_in = dst.structures.fan_in()
    for name, backend in (("rigl", "csr"), ("set", "csr"), ("gmp", "csr"), ("snfs", "csr"), ("rigl", "condensed")):
        structure = fan_in if backend == "condensed" else None
        algo = make_algorithm(name, update_every=3, end_step=20, structure=structure)
        if structure is None:
            masks = initial_masks(name, params)
        else:
            densities = dst.structures.structured_densities(params, 0.8, "erk", structure)
            masks = dst.init_masks(jax.random.key(0), params, densities, structure=structure)
        layers = dst.sparsifiable_layers(params)
        runs = []
        for mesh in (None, dp.mesh):
            storage = stored.make_storage(model, backend, masks, layers, mesh, stored.default_capacity(algo))
            step = dst.make_train_step(None, OPTIMIZERS["sgd_momentum"](), algo, storage=storage)
            state = dst.create_train_state(jax.random.key(0), params, masks, OPTIMIZERS["sgd_momentum"](), algo,
                                           storage=storage)
            epoch = dst.train_epoch_fn(step, 32, batch_sharding=None if mesh is None else dp.batch)
            put = (lambda a: a) if mesh is None else dp.replicate
            state = put(state)
            for e in range(2):
                state, m = epoch(state, put(x), put(y), jax.random.key(e))
            runs.append((stored.expand_state(storage, state.params, state.live, state.topologies), m))
        ((p1, m1), a), ((p4, m4), b) = runs
        out[f"{{name}}/{{backend}}"] = dict(
            masks_equal=all(np.array_equal(np.asarray(u), np.asarray(v))
                            for u, v in zip(jax.tree_util.tree_leaves(m1), jax.tree_util.tree_leaves(m4))),
            param_err=max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
                          for u, v in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p4))),
            loss_err=float(np.max(np.abs(np.asarray(a["loss"]) - np.asarray(b["loss"])))),
            updates=int(np.sum(np.asarray(b["updated"]))))
    print(__import__("json").dumps(out))
""")


@pytest.mark.slow   # a subprocess with 4 forced host devices
def test_four_devices_on_the_stored_backends_keep_the_masks_of_one_device():
    """Each device runs the kernels on its rows of the batch (dst.backends.sharded_matmul): after two
    epochs with topology updates, the masks equal a one-device csr run's and the params agree within
    the masked path's tolerance."""
    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", STORED_SCRIPT.format(tests=tests)], capture_output=True, text=True,
                         env=FOUR, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(results) == ["gmp/csr", "rigl/condensed", "rigl/csr", "set/csr", "snfs/csr"]
    for name, r in results.items():
        assert r["masks_equal"] and r["updates"] == 3, (name, r)
        assert r["param_err"] < 1e-5 and r["loss_err"] < 1e-5, (name, r)


@pytest.mark.slow   # two CLI runs, one with 4 forced host devices (about 30 s)
def test_a_born_sparse_run_on_four_devices_records_what_one_device_does(tmp_path):
    """Born-sparse layers (created in csr storage from their counts) with the batch split over four devices:
    the same topology everywhere, so the records of a one-device run within the masked path's tolerances."""
    data = write_dataset(tmp_path / "fashion_mnist")
    common = [sys.executable, "-m", "dst.train", f"dataset.data_dir={data}", "trainer.epochs=2", "logger=none",
              "trainer.batch_size=64", "sparsity=set", "sparsity.update_every=5", "sparsity.backend=csr",
              "sparsity.born_sparse=true"]
    records = {}
    for devices, env in ((1, os.environ | {"JAX_PLATFORMS": "cpu"}), (4, FOUR)):
        run = subprocess.run([*common, f"hydra.run.dir={tmp_path / str(devices)}"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "born sparse in csr storage" in run.stdout
        assert json.loads((tmp_path / str(devices) / "summary.json").read_text())["devices"] == devices
        lines = (tmp_path / str(devices) / "metrics.jsonl").read_text().splitlines()
        records[devices] = [json.loads(line) for line in lines]
    assert len(records[1]) == len(records[4]) == 2
    for one, four in zip(records[1], records[4]):
        for key, value in one.items():
            if key.startswith(("sparsity/", "dead_units/", "fan_in/")) or key in ("step", "epoch"):
                assert four[key] == value, key      # the topology: equal
            elif key.startswith(("train/", "test/")) and isinstance(value, float):
                assert four[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
