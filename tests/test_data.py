"""IDX parsing, data lookup order, normalisation and splits, on files the tests write."""

import gzip

import numpy as np
import pytest
from idx_data import write_dataset

from dst.data import DataError
from dst.data import DataNotFoundError
from dst.data import load
from dst.data import locate
from dst.data import read_idx
from dst.data import write_idx
from dst.data.datasets import candidate_dirs


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    array = np.random.default_rng(0).integers(0, 255, (7, 5, 3)).astype(np.uint8)
    write_idx(tmp_path / f"a{suffix}", array)
    np.testing.assert_array_equal(read_idx(tmp_path / f"a{suffix}"), array)


def test_idx_header_is_the_mnist_layout(tmp_path):
    write_idx(tmp_path / "labels", np.array([1, 2, 3], np.uint8))
    assert (tmp_path / "labels").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])


def test_truncated_file_names_the_file(tmp_path):
    write_idx(tmp_path / "x", np.zeros((10, 28, 28), np.uint8))
    data = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"x is truncated or corrupt"):
        read_idx(tmp_path / "x")


def test_corrupt_gzip_and_bad_magic_name_the_file(tmp_path):
    (tmp_path / "y.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")[:-12])
    with pytest.raises(DataError, match=r"y\.gz"):
        read_idx(tmp_path / "y.gz")
    (tmp_path / "z").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match=r"z is not an IDX file"):
        read_idx(tmp_path / "z")


def test_data_dir_must_hold_the_files_without_fallback(tmp_path, monkeypatch):
    write_dataset(tmp_path / "env" / "fashion_mnist")
    monkeypatch.setenv("DST_DATA_DIR", str(tmp_path / "env"))
    assert locate("fashion_mnist") == tmp_path / "env" / "fashion_mnist"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="dataset.data_dir=.*empty.*apt-get install dataset-fashion-mnist"):
        locate("fashion_mnist", str(tmp_path / "empty"))


def test_lookup_order_env_then_cache_then_system(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DST_DATA_DIR", str(tmp_path / "env"))
    dirs = [str(d) for d in candidate_dirs("fashion_mnist")]
    assert dirs[0] == str(tmp_path / "env" / "fashion_mnist")
    assert dirs.index(str(tmp_path / "env")) < dirs.index(str(tmp_path / "home/.cache/dst/fashion_mnist"))
    assert dirs[-1] == "/usr/share/datasets/fashion-mnist"
    write_dataset(tmp_path / "home/.cache/dst/kmnist")
    assert locate("kmnist") == tmp_path / "home/.cache/dst/kmnist"


def test_missing_data_is_one_sentence_saying_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DST_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError) as err:
        locate("kmnist")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / ".cache/dst/kmnist") in message
    assert "t10k-labels-idx1-ubyte.gz" in message and "DST_DATA_DIR" in message


def test_load_normalises_splits_and_shuffles_from_the_seed(tmp_path):
    folder = write_dataset(tmp_path / "d", n_train=500, gz=False)
    a = load("mnist", str(folder), val_fraction=0.2, seed=1)
    assert a.train_x.shape == (400, 28, 28) and a.val_x.shape == (100, 28, 28)
    assert a.train_x.dtype == np.float32 and a.train_y.dtype == np.int32
    all_train = np.concatenate([a.train_x, a.val_x])
    assert abs(all_train.mean()) < 1e-4 and abs(all_train.std() - 1) < 1e-3
    b = load("mnist", str(folder), val_fraction=0.2, seed=1)
    c = load("mnist", str(folder), val_fraction=0.2, seed=2)
    np.testing.assert_array_equal(a.val_y, b.val_y)
    assert not np.array_equal(a.val_y, c.val_y)
    unit = load("mnist", str(folder), normalize="unit")
    assert unit.train_x.min() >= 0 and unit.train_x.max() <= 1


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(DataError, match="dataset.name must be one of fashion_mnist, mnist, kmnist"):
        locate("svhn")
