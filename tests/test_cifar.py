"""CIFAR-10/100 python batches: the real parser, lookup, per-channel normalisation and every error sentence."""

import pickle
import shutil

import numpy as np
import pytest
from cifar_data import CIFAR10_DIR
from cifar_data import CIFAR100_DIR
from cifar_data import py2_pickle
from cifar_data import write_batch
from cifar_data import write_cifar10
from cifar_data import write_cifar100

from dst.data import DATASETS
from dst.data import DataError
from dst.data import DataNotFoundError
from dst.data import load
from dst.data import locate
from dst.data.cifar import read_batch


@pytest.fixture(scope="session")
def cifar10(tmp_path_factory):
    root = tmp_path_factory.mktemp("c10")
    folder, arrays = write_cifar10(root)
    return root, folder, arrays


@pytest.fixture(scope="session")
def cifar100(tmp_path_factory):
    root = tmp_path_factory.mktemp("c100")
    folder, arrays = write_cifar100(root)
    return root, folder, arrays


def _one_sentence(err) -> str:
    message = str(err.value)
    assert "\n" not in message and message.endswith(".")
    return message


def test_cifar10_reads_channel_planar_rows_as_nhwc(cifar10):
    root, folder, arrays = cifar10
    raw = load("cifar10", str(root), normalize="none")
    assert raw.train_x.shape == (250, 32, 32, 3) and raw.test_x.shape == (50, 32, 32, 3)
    assert raw.train_x.dtype == np.float32 and raw.train_y.dtype == np.int32
    order = np.random.default_rng(0).permutation(250)          # load() shuffles the training set by seed
    np.testing.assert_array_equal(raw.train_x, arrays["train_x"][order].astype(np.float32))
    np.testing.assert_array_equal(raw.train_y, arrays["train_y"][order])
    np.testing.assert_array_equal(raw.test_x, arrays["test_x"].astype(np.float32))
    np.testing.assert_array_equal(raw.test_y, arrays["test_y"])
    assert raw.num_classes == 10 and raw.name == "cifar10" and raw.source == str(folder)
    np.testing.assert_array_equal(raw.pad_value, np.zeros(3))
    # one pixel by hand: row r of the file is [R plane | G plane | B plane], each 32x32 row-major
    rows = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")[b"data"]
    assert raw.test_x[3, 5, 7].tolist() == [rows[3, 5 * 32 + 7], rows[3, 1024 + 5 * 32 + 7], rows[3, 2048 + 5 * 32 + 7]]


def test_data_dir_may_be_the_batch_folder_or_the_folder_it_was_unpacked_into(cifar10):
    root, folder, _ = cifar10
    assert locate("cifar10", str(root)) == folder == locate("cifar10", str(folder))
    a, b = load("cifar10", str(root)), load("cifar10", str(folder))
    np.testing.assert_array_equal(a.train_x, b.train_x)


def test_standard_normalisation_is_per_channel_with_the_training_statistics(cifar10):
    root, _, arrays = cifar10
    data = load("cifar10", str(root), val_fraction=0.2, seed=1)
    pixels = arrays["train_x"].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(data.mean, pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(data.std, pixels.std(0), rtol=1e-6)
    assert data.mean.shape == (3,) and len(set(data.mean.round(6))) == 3     # three different channels
    everything = np.concatenate([data.train_x, data.val_x]).reshape(-1, 3)
    np.testing.assert_allclose(everything.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(everything.std(0), 1, atol=1e-4)
    expected = (arrays["test_x"] / 255.0 - pixels.mean(0)) / pixels.std(0)      # torchvision's Normalize
    np.testing.assert_allclose(data.test_x, expected, atol=1e-5)
    np.testing.assert_allclose(data.pad_value, -pixels.mean(0) / pixels.std(0), rtol=1e-6)
    assert data.train_x.shape == (200, 32, 32, 3) and data.val_x.shape == (50, 32, 32, 3)
    unit = load("cifar10", str(root), normalize="unit")
    assert unit.train_x.min() >= 0 and unit.train_x.max() <= 1
    np.testing.assert_array_equal(unit.pad_value, np.zeros(3))


def test_cifar100_fine_and_coarse_labels(cifar100):
    root, folder, arrays = cifar100
    fine = load("cifar100", str(root), normalize="none")
    coarse = load("cifar100", str(folder), normalize="none", label_mode="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert fine.train_x.shape == (100, 32, 32, 3) and fine.test_x.shape == (50, 32, 32, 3)
    np.testing.assert_array_equal(fine.test_y, arrays["test_y"])
    np.testing.assert_array_equal(coarse.test_y, arrays["test_coarse"])
    np.testing.assert_array_equal(coarse.train_y, fine.train_y // 5)       # same shuffle, other label set
    np.testing.assert_array_equal(fine.test_x, arrays["test_x"].astype(np.float32))


def test_label_mode_is_checked(cifar10):
    root = cifar10[0]
    with pytest.raises(DataError, match="label_mode=coarse applies to cifar100 only"):
        load("cifar10", str(root), label_mode="coarse")
    with pytest.raises(DataError, match="dataset.label_mode must be one of fine, coarse; got 'super'"):
        load("cifar100", str(root), label_mode="super")


def test_lookup_order_and_archive_subfolder(cifar10, cifar100, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DST_DATA_DIR", str(tmp_path / "env"))
    shutil.copytree(cifar10[1], tmp_path / "home/.cache/dst/cifar10" / CIFAR10_DIR)
    assert locate("cifar10") == tmp_path / "home/.cache/dst/cifar10" / CIFAR10_DIR
    shutil.copytree(cifar10[1], tmp_path / "env" / CIFAR10_DIR)       # $DST_DATA_DIR itself, archive layout
    assert locate("cifar10") == tmp_path / "env" / CIFAR10_DIR
    shutil.copytree(cifar10[1], tmp_path / "env/cifar10")             # $DST_DATA_DIR/<name>, batch files
    assert locate("cifar10") == tmp_path / "env/cifar10"
    shutil.copytree(cifar100[1], tmp_path / "env/cifar100" / CIFAR100_DIR)
    assert locate("cifar100") == tmp_path / "env/cifar100" / CIFAR100_DIR


def test_missing_data_is_one_sentence_with_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DST_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError) as err:
        locate("cifar100")
    message = _one_sentence(err)
    assert str(tmp_path / "home/.cache/dst/cifar100") in message and "/usr/share/datasets/cifar100" in message
    assert "'dst-data download cifar100'" in message and CIFAR100_DIR in message
    assert "cifar-100-python.tar.gz" in message and "DST_DATA_DIR" in message
    (tmp_path / "given" / CIFAR10_DIR).mkdir(parents=True)
    write_batch(tmp_path / "given" / CIFAR10_DIR / "data_batch_1", *write_cifar10_batch())
    with pytest.raises(DataNotFoundError) as err:
        load("cifar10", str(tmp_path / "given"))
    message = _one_sentence(err)
    assert message.startswith(f"dataset.data_dir={str(tmp_path / 'given')!r} does not hold the cifar10 files")
    assert "lacks data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch" in message
    assert f"'dst-data download cifar10 --dir {tmp_path / 'given'}'" in message


def write_cifar10_batch(n=5):
    return np.zeros((n, 32, 32, 3), np.uint8), np.arange(n) % 10


def _expect(tmp_path, content, pattern, name="cifar10"):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as err:
        read_batch(path, name)
    assert str(path) in _one_sentence(err)


def test_truncated_or_foreign_files_name_the_file_and_the_fault(tmp_path, cifar10, cifar100):
    good = (cifar10[1] / "data_batch_1").read_bytes()
    _expect(tmp_path, good[: len(good) // 2], "is not a complete CIFAR python batch .unpickling failed")
    _expect(tmp_path, b"", "is not a complete CIFAR python batch")
    _expect(tmp_path, b"\x1f\x8b\x08 a gzip file, not a pickle", "is not a complete CIFAR python batch")
    _expect(tmp_path, py2_pickle([1, 2, 3]), "is not a CIFAR python batch: it holds a list, not a dict")
    _expect(tmp_path, py2_pickle({b"labels": [1]}), "has no 'data' entry")
    _expect(tmp_path, py2_pickle({b"data": np.zeros((2, 3072), np.uint8)}), "has no 'labels' labels.*keys are data")
    _expect(tmp_path, py2_pickle({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}),
            r"'data' is a uint8 array of shape \(2, 1024\); a cifar10 batch holds uint8 rows of 3072")
    _expect(tmp_path, py2_pickle({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}),
            "'data' is a float32 array")
    _expect(tmp_path, py2_pickle({b"data": [[0] * 3072], b"labels": [0]}), "'data' is list")
    _expect(tmp_path, py2_pickle({b"data": np.zeros((50, 3072), np.uint8), b"labels": [0] * 49}),
            "holds 50 images but 49 'labels' labels")
    _expect(tmp_path, py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
            "has 'labels' outside 0..9 .from 0 to 10., so it is not a cifar10 batch")
    _expect(tmp_path, (cifar100[1] / "train").read_bytes(), "looks like a cifar100 file .use dataset.name=cifar100")
    _expect(tmp_path, good, "looks like a cifar10 file .use dataset.name=cifar10", name="cifar100")


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    _expect(tmp_path, payload, "refers to os.system, which a CIFAR batch never does")
    assert not marker.exists()


def test_a_corrupt_batch_inside_a_data_set_names_that_file(cifar10, tmp_path):
    folder = tmp_path / CIFAR10_DIR
    shutil.copytree(cifar10[1], folder)
    (folder / "data_batch_4").write_bytes((folder / "data_batch_4").read_bytes()[:-40])
    with pytest.raises(DataError) as err:
        load("cifar10", str(tmp_path))
    assert str(folder / "data_batch_4") in _one_sentence(err)


def test_cifar_sets_are_registered():
    assert {"cifar10", "cifar100", "mnist1d"} <= set(DATASETS)
    with pytest.raises(DataError, match="dataset.name must be one of fashion_mnist, mnist, kmnist, cifar10"):
        locate("svhn")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_pickles_of_every_protocol_load(tmp_path, protocol):
    # Python 3 writes the same arrays with other globals by protocol: 2 re-encodes bytes through
    # _codecs.encode, 5 rebuilds arrays with numpy's _frombuffer; both hold exactly the batch.
    rng = np.random.default_rng(protocol)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [0, 9, 4], b"batch_label": b"x"}, protocol=protocol))
    images, labels = read_batch(path, "cifar10")
    np.testing.assert_array_equal(images, data.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(labels, [0, 9, 4])


def test_codecs_encode_is_allowed_for_latin1_only(tmp_path):
    # A protocol 2 pickle that asks _codecs.encode for another codec is not a CIFAR batch.
    payload = pickle.dumps({b"data": b"\x00"}, protocol=2).replace(b"latin1", b"rot_13")
    _expect(tmp_path, payload, "calls _codecs.encode with 'rot_13', which a CIFAR batch never does")
