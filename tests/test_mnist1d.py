"""MNIST-1D: generated offline from the published defaults, cached, and equal to the published data."""

import hashlib
import random
import shutil
import sys

import numpy as np
import pytest

from dst.data import DataError
from dst.data import load
from dst.data import locate
from dst.data import mnist1d
from dst.data.cli import main

# Taken from the published mnist1d_data.pkl (github.com/greydanus/mnist1d, the data set the paper uses).
PUBLISHED = {
    "train_y_head": [2, 6, 4, 5, 6, 6, 6, 0, 3, 1, 6, 9, 4, 3, 4, 5, 1, 9, 0, 3],
    "test_y_head": [2, 6, 3, 9, 4, 3, 1, 9, 5, 2, 0, 7, 7, 1, 4, 6, 1, 4, 3, 9],
    "train_counts": [398, 396, 411, 394, 394, 402, 401, 404, 402, 398],
    "test_counts": [102, 104, 89, 106, 106, 98, 99, 96, 98, 102],
    "train_x_0_head": [-0.33200567, -0.47191037, -0.77869708, -1.00974083, -0.88235257, 0.10393481],
    "test_x_last_tail": [-0.39591055, -0.09864609, 0.44723289, 0.65987565, 0.87773435, 1.19315184],
    "abs_sums": (118338.29510719894, 29977.877540866408),
    "labels_sha256": "343d27bb023cbbfe98bd258e8958f2bb90aea365a196a7bc6f0c19efb7014a47",
}


@pytest.fixture(scope="session")
def cached(tmp_path_factory):
    """One generation for the module: the data set loaded (and cached) from a fresh folder."""
    folder = tmp_path_factory.mktemp("mnist1d")
    return folder, load("mnist1d", str(folder))


def test_published_defaults_shapes_and_labels(cached):
    folder, data = cached
    assert data.train_x.shape == (4000, 40) and data.test_x.shape == (1000, 40)
    assert data.train_x.dtype == np.float32 and data.test_x.dtype == np.float32
    assert data.train_y.dtype == np.int32 and data.val_x.shape == (0, 40)
    assert set(np.unique(data.train_y)) == set(range(10)) == set(np.unique(data.test_y))
    assert data.num_classes == 10 and data.name == "mnist1d"
    assert data.source == str(folder / mnist1d.cache_name(mnist1d.DEFAULTS))
    assert list(folder.glob("mnist1d_*.npz")) == [folder / mnist1d.cache_name(mnist1d.DEFAULTS)]


def test_equals_the_published_data_set(cached):
    folder, loaded = cached
    arrays, _ = mnist1d.load(str(folder))        # the generator's order; load() shuffles the training set
    data = type("Arrays", (), arrays)
    np.testing.assert_array_equal(loaded.test_x, data.test_x)
    order = np.lexsort(loaded.train_x.T)
    np.testing.assert_array_equal(loaded.train_x[order], data.train_x[np.lexsort(data.train_x.T)])
    assert data.train_y[:20].tolist() == PUBLISHED["train_y_head"]
    assert data.test_y[:20].tolist() == PUBLISHED["test_y_head"]
    assert np.bincount(data.train_y).tolist() == PUBLISHED["train_counts"]
    assert np.bincount(data.test_y).tolist() == PUBLISHED["test_counts"]
    labels = data.train_y.astype(np.int32).tobytes() + data.test_y.astype(np.int32).tobytes()
    assert hashlib.sha256(labels).hexdigest() == PUBLISHED["labels_sha256"]
    np.testing.assert_allclose(data.train_x[0, :6], PUBLISHED["train_x_0_head"], atol=1e-6)
    np.testing.assert_allclose(data.test_x[-1, -6:], PUBLISHED["test_x_last_tail"], atol=1e-6)
    sums = (np.abs(data.train_x).sum(dtype=np.float64), np.abs(data.test_x).sum(dtype=np.float64))
    np.testing.assert_allclose(sums, PUBLISHED["abs_sums"], rtol=1e-6)


def test_cache_is_reused_and_equals_a_fresh_generation(cached, monkeypatch):
    folder, first = cached
    fresh = mnist1d.generate()
    monkeypatch.setattr(mnist1d, "generate", lambda **_: pytest.fail("the cache was not used"))
    arrays, path = mnist1d.load(str(folder))
    assert path == folder / mnist1d.cache_name(mnist1d.DEFAULTS)
    for key in mnist1d.KEYS:
        assert arrays[key].dtype == fresh[key].dtype
        np.testing.assert_array_equal(arrays[key], fresh[key])
    again = load("mnist1d", str(folder))
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(again, key), getattr(first, key))
    assert locate("mnist1d", str(folder)) == path


def test_generation_restores_the_global_random_state():
    random.seed(7)
    np.random.seed(7)
    before = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    mnist1d.generate(num_samples=50)
    assert (random.random(), np.random.rand()) == before


def test_lookup_finds_the_cache_in_the_usual_places_and_writes_to_the_user_cache(cached, tmp_path, monkeypatch):
    folder, data = cached
    name = mnist1d.cache_name(mnist1d.DEFAULTS)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DST_DATA_DIR", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    shutil.copy(folder / name, tmp_path / "env" / name)
    assert locate("mnist1d") == tmp_path / "env" / name
    (tmp_path / "env" / name).unlink()
    assert locate("mnist1d") == tmp_path / "env" / "mnist1d" / name       # where it will be written
    monkeypatch.delenv("DST_DATA_DIR")
    assert locate("mnist1d") == tmp_path / "home/.cache/dst/mnist1d" / name
    shutil.copy(folder / name, tmp_path / "home-copy.npz")
    (tmp_path / "home/.cache/dst/mnist1d").mkdir(parents=True)
    shutil.copy(tmp_path / "home-copy.npz", tmp_path / "home/.cache/dst/mnist1d" / name)
    np.testing.assert_array_equal(load("mnist1d").test_x, data.test_x)


def test_a_corrupt_cache_is_generated_again(tmp_path):
    path = tmp_path / mnist1d.cache_name({**mnist1d.DEFAULTS, "num_samples": 100})
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(UserWarning, match="unreadable MNIST-1D cache"):
        arrays, source = mnist1d.load(str(tmp_path), num_samples=100)
    assert source == path and arrays["train_x"].shape == (80, 40) and arrays["test_y"].shape == (20,)
    again, _ = mnist1d.load(str(tmp_path), num_samples=100)
    np.testing.assert_array_equal(again["train_x"], arrays["train_x"])


def test_missing_package_is_one_sentence_naming_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)      # makes `import mnist1d` fail
    with pytest.raises(DataError) as err:
        load("mnist1d", str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "needs the mnist1d package" in message and "pip install" in message
    assert mnist1d.REQUIREMENT in message


def test_options_that_do_not_apply_are_refused(tmp_path):
    with pytest.raises(DataError, match="normalize=unit needs pixel data"):
        load("mnist1d", str(tmp_path), normalize="unit")
    with pytest.raises(DataError, match="label_mode=coarse applies to cifar100 only"):
        load("mnist1d", str(tmp_path), label_mode="coarse")
    with pytest.raises(DataError, match="unknown MNIST-1D generator arguments bogus"):
        mnist1d.generate(bogus=1)


def test_validation_split_and_generate_command(cached, capsys):
    folder, data = cached
    split = load("mnist1d", str(folder), val_fraction=0.25, seed=3)
    assert split.train_x.shape == (3000, 40) and split.val_x.shape == (1000, 40)
    np.testing.assert_array_equal(np.sort(np.concatenate([split.train_y, split.val_y])), np.sort(data.train_y))
    assert main(["generate", "mnist1d", "--dir", str(folder)]) == 0
    assert str(folder / mnist1d.cache_name(mnist1d.DEFAULTS)) in capsys.readouterr().out
