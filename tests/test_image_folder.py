"""dataset=image_folder: files the test writes in the real layout (PNG/JPEG in class folders), grain's
host pipeline, chunked training equal to the on-device loop, streaming evaluation, and the CLI."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from algo_helpers import start_state
from cli_helpers import ENV
from cli_helpers import dst_train
from cli_helpers import dst_train_here
from cli_helpers import forced_devices
from image_data import CLASSES
from image_data import write_folder
from PIL import Image

import dst
from dst.data import DataError
from dst.data import image_folder
from dst.train.epoch import run_steps
from dst.train.evaluate import stream_evaluate_fn
from dst.train.stream import StreamEpoch


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images"))


def test_scan_lists_classes_in_name_order_and_labels_each_file(folder):
    data = image_folder.scan(folder, image_size=16)
    assert data.classes == CLASSES and data.num_classes == 3
    assert len(data.train_files) == 36 and len(data.test_files) == 12 and len(data.val_y) == 0
    for path, label in zip(data.train_files + data.test_files, np.concatenate([data.train_y, data.test_y])):
        assert f"/{CLASSES[label]}/" in path
    assert data.resize == round(16 / 0.875) and data.example_shape == (16, 16, 3)


def test_crop_box_follows_the_random_resized_crop_rule():
    rng = np.random.default_rng(0)
    for _ in range(500):
        w, h = (int(v) for v in rng.integers(20, 300, 2))
        left, top, right, bottom = image_folder.crop_box(rng, w, h)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        cw, ch = right - left, bottom - top
        if (cw, ch) != (w, h) and cw / ch not in (w / h,):
            # A sampled crop: area 8-100% and aspect 3/4-4/3, up to rounding to whole pixels.
            assert 0.08 * w * h * 0.8 <= cw * ch <= w * h
            assert 3 / 4 * 0.8 <= cw / ch <= 4 / 3 * 1.25
    # An image too elongated for any sampled crop falls back to the center crop at the nearest ratio.
    never = np.random.default_rng(1)
    box = image_folder.crop_box(never, 1000, 10)
    assert box[3] - box[1] == 10 and math.isclose((box[2] - box[0]) / 10, 4 / 3, rel_tol=0.1)


def test_center_box_resizes_the_shorter_side_then_crops_the_middle():
    size, box = image_folder.center_box(300, 200, 256, 224)
    assert size == (384, 256) and box == (80, 16, 304, 240)


def test_evaluation_pixels_are_normalised_with_imagenet_statistics(tmp_path):
    # Images already at the crop size with resize == size: resize and crop leave the pixels as they are.
    root = write_folder(tmp_path / "f", per_class=(2, 2), size=(16, 17))
    data = image_folder.scan(root, image_size=16, resize=16)
    x, y = image_folder.eval_example(data, 0)
    pixels = np.asarray(Image.open(data.test_files[0]).convert("RGB"), np.float64) / 255
    expected = (pixels - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    assert x.dtype == np.float32 and y == data.test_y[0]


def test_train_chunks_are_fixed_by_the_seed_whatever_the_thread_count(folder):
    data = image_folder.scan(folder, image_size=16)
    one = list(image_folder.train_chunks(data, 7, 4, 9, 4, threads=1))
    three = list(image_folder.train_chunks(data, 7, 4, 9, 4, threads=3))
    other = list(image_folder.train_chunks(data, 8, 4, 9, 4, threads=3))
    assert [c[0].shape for c in one] == [(4, 4, 16, 16, 3), (4, 4, 16, 16, 3), (1, 4, 16, 16, 3)]
    for (xa, ya), (xb, yb) in zip(one, three):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(one[0][0], other[0][0])
    # 36 images, 9 batches of 4: every image at most once, labels as scanned.
    labels = np.concatenate([y.ravel() for _, y in one])
    assert len(labels) == 36 and np.array_equal(np.bincount(labels, minlength=3), np.bincount(data.train_y))


def test_each_host_decodes_its_rows_and_the_hosts_together_give_the_single_host_chunks(folder):
    data = image_folder.scan(folder, image_size=16)
    whole = list(image_folder.train_chunks(data, 7, 4, 9, 4, threads=2))
    parts = [list(image_folder.train_chunks(data, 7, 4, 9, 4, threads=2, shard=(i, 2))) for i in range(2)]
    assert [c[0].shape for c in parts[0]] == [(4, 2, 16, 16, 3), (4, 2, 16, 16, 3), (1, 2, 16, 16, 3)]
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
        np.testing.assert_array_equal(x, np.concatenate([x0, x1], axis=1))
        np.testing.assert_array_equal(y, np.concatenate([y0, y1], axis=1))
    with pytest.raises(ValueError, match="shard must be"):
        image_folder.train_chunks(data, 7, 4, 9, 4, shard=(0, 3))


def test_eval_batches_cover_the_val_images_in_order(folder):
    data = image_folder.scan(folder, image_size=16)
    batches = list(image_folder.eval_batches(data, 5, threads=2))
    assert [len(y) for _, y in batches] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), data.test_y)
    np.testing.assert_array_equal(batches[1][0][0], image_folder.eval_example(data, 5)[0])


def test_bad_folders_fail_in_one_sentence(tmp_path):
    with pytest.raises(DataError, match=r"dataset.data_dir must name the image folder"):
        image_folder.locate(None)
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train has no image files"):
        image_folder.scan(tmp_path / "empty")
    bad = write_folder(tmp_path / "bad", per_class=(2, 1))
    (bad / "train" / "ant" / "0.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot read image .*ant/0.png"):
        image_folder.scan(bad, image_size=16)
    missing_val = write_folder(tmp_path / "noval", per_class=(2, 1))
    for f in (missing_val / "val").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match=r"val has no image files"):
        image_folder.scan(missing_val, image_size=16)


def test_an_unreadable_file_met_while_streaming_names_the_file(tmp_path):
    root = write_folder(tmp_path / "f", per_class=(4, 1))
    (root / "train" / "cow" / "3.png").write_bytes(b"\x89PNG truncated")
    data = image_folder.scan(root, image_size=16)
    with pytest.raises(DataError, match=r"cannot read image .*cow/3.png"):
        list(image_folder.train_chunks(data, 0, 4, 3, 3, threads=2))


@pytest.mark.parametrize("loop", ["scan", "host"])
def test_chunked_epoch_equals_the_same_batches_run_on_the_device(loop):
    """RigL with updates every 3 steps over 10 batches in chunks of 4: updates fall inside chunks and on
    their boundaries; params, masks, optimizer state and every per-step metric match one scan."""
    model, x, y, algo, tx, state = start_state("rigl", update_every=3)
    step = dst.make_train_step(dst.flax_apply(model), tx, algo)
    xs, ys = np.asarray(x[:240]).reshape(10, 24, -1), np.asarray(y[:240]).reshape(10, 24)
    ref_state, ref = jax.jit(lambda s, xs, ys: run_steps(step, s, lambda i: (xs[i], ys[i]), 10))(state, xs, ys)
    chunks = [(xs[i:i + 4], ys[i:i + 4]) for i in range(0, 10, 4)]
    epoch = StreamEpoch(step, loop=loop)
    epoch.compile(state, (4, 24, xs.shape[-1]))
    got_state, got = epoch(state, iter(chunks))
    assert int(np.sum(np.asarray(ref["updated"]))) >= 3
    for a, b in zip(jax.tree_util.tree_leaves(ref_state.masks), jax.tree_util.tree_leaves(got_state.masks)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves((ref_state.params, ref_state.opt_state)),
                    jax.tree_util.tree_leaves((got_state.params, got_state.opt_state))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    counts = ("grown", "dropped")
    for a, b in zip(jax.tree_util.tree_leaves({k: v for k, v in ref.items() if k not in counts}),
                    jax.tree_util.tree_leaves({k: v for k, v in got.items() if k not in counts})):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-6)
    # An update on a chunk's last step is settled at the chunk's end, so its counts sit on that step's
    # row instead of the next one's; per epoch (what a record sums) they are the same.
    for kind in counts:
        assert {n: int(np.sum(c)) for n, c in ref[kind].items()} == {n: int(np.sum(c)) for n, c in got[kind].items()}
        assert sum(int(np.sum(c)) for c in got[kind].values()) > 0


def test_streaming_evaluation_equals_on_device_evaluation():
    model, x, y, _, _, state = start_state("static")
    apply_fn = dst.flax_apply(model)
    expected = dst.evaluate_fn(apply_fn, 64)(state.params, state.model_state, x[:150], y[:150])
    xs, ys = np.asarray(x[:150]), np.asarray(y[:150])
    batches = [(xs[i:i + 64], ys[i:i + 64]) for i in range(0, 150, 64)]    # 64, 64, 22 rows
    got = stream_evaluate_fn(apply_fn, 64)(state.params, state.model_state, iter(batches))
    np.testing.assert_allclose(float(got["accuracy"]), float(expected["accuracy"]), rtol=1e-6)
    np.testing.assert_allclose(float(got["loss"]), float(expected["loss"]), rtol=1e-5)


def test_label_smoothing_matches_the_formula():
    from dst.train.step import smoothed_cross_entropy

    logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    labels = jnp.array([0, 1])
    p = jax.nn.log_softmax(logits)
    targets = np.full((2, 3), 0.1 / 3) + 0.9 * np.eye(3)[[0, 1]]
    expected = -np.mean(np.sum(targets * np.asarray(p), axis=1))
    np.testing.assert_allclose(float(smoothed_cross_entropy(0.1)(logits, labels)), expected, rtol=1e-6)


def _cli(tmp_path, folder, *overrides, run=dst_train):
    return run("dataset=image_folder", f"dataset.data_dir={folder}", "dataset.image_size=8",
                     "model=mlp", "model.hidden=[32]", "trainer.batch_size=6", "dataset.chunk_steps=4",
                     "dataset.workers=2", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", *overrides,
                     cwd=tmp_path)


@pytest.mark.slow
def test_cli_streams_over_four_devices_as_over_one(tmp_path, folder):
    # Each chunk is assembled from the host's rows (make_array_from_process_local_data) and split over
    # the 4 forced host devices; the run must match the one-device run, in a compiled chunk and in the
    # host loop (one dispatch per step on a row of the global chunk).
    four = forced_devices(4)
    records = {}
    for name, env, loop in (("one", ENV, "scan"), ("four", four, "scan"), ("four_host", four, "host")):
        out = subprocess.run([sys.executable, "-m", "dst.train", "dataset=image_folder", f"dataset.data_dir={folder}",
                              "dataset.image_size=8", "model=mlp", "model.hidden=[32]", "trainer.batch_size=8",
                              "dataset.chunk_steps=2", "trainer.epochs=2", "sparsity.update_every=2",
                              f"trainer.epoch_loop={loop}", "logger=none", f"hydra.run.dir={tmp_path / name}"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        records[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    for name in ("four", "four_host"):
        assert json.loads((tmp_path / name / "summary.json").read_text())["devices"] == 4
        for a, b in zip(records["one"], records[name], strict=True):
            assert a["step"] == b["step"] and a["topology/updates"] == b["topology/updates"] > 0
            for key in ("train/loss", "train/accuracy", "test/accuracy", "itop_rate"):
                assert b[key] == pytest.approx(a[key], abs=1e-5), (name, key)


@pytest.mark.slow   # two real dst-train processes (25-45 s)
def test_cli_trains_from_an_image_folder_and_resumes(tmp_path, folder):
    out = _cli(tmp_path, folder, "trainer.epochs=2", "trainer.label_smoothing=0.1")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["step"] == 12   # 36 // 6 = 6 per epoch
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and 0 <= summary["test/accuracy"] <= 1
    # The same command with more epochs goes on from the checkpoint, replaying nothing.
    out = _cli(tmp_path, folder, "trainer.epochs=3", "trainer.label_smoothing=0.1")
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[-1]["step"] == 18


@pytest.mark.parametrize("overrides, message", [
    (("dataset.data_dir=null",), "dataset.data_dir must name the image folder"),
    (("trainer.seeds=[0,1]",), "trainer.seeds must be null with dataset.name=image_folder"),
    (("dataset.augment=crop_flip",), "dataset.augment must be none with dataset.name=image_folder"),
    (("dataset.chunk_steps=0",), "dataset.chunk_steps must be a positive integer"),
])
def test_cli_bad_image_folder_settings_are_one_sentence(tmp_path, folder, overrides, message):
    out = _cli(tmp_path, folder, *overrides, run=dst_train_here)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert len([line for line in out.stderr.splitlines() if line.startswith("error:")]) == 1


def test_cli_empty_image_folder_is_one_sentence(tmp_path):
    (tmp_path / "f" / "train" / "a").mkdir(parents=True)
    (tmp_path / "f" / "val" / "a").mkdir(parents=True)
    out = _cli(tmp_path, tmp_path / "f", run=dst_train_here)
    assert out.returncode == 2 and "has no image files" in out.stderr, out.stderr[-2000:]
