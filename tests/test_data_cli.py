"""`dst-data`: downloads verified by md5 and unpacked (from local file:// URLs: no network), and its CLI."""

import gzip
import hashlib
import io
import tarfile

import numpy as np
import pytest
from cifar_data import CIFAR10_DIR
from cifar_data import write_cifar10
from idx_data import write_dataset

from dst.data import DATASETS
from dst.data import DataError
from dst.data import load
from dst.data.cli import main
from dst.data.download import RESOURCES
from dst.data.download import Resource
from dst.data.download import download
from dst.data.download import extract


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def cifar_tarball(tmp_path_factory):
    """A small cifar-10-python.tar.gz laid out like the official one (cifar-10-batches-py/ at the top)."""
    staging = tmp_path_factory.mktemp("staging")
    folder, arrays = write_cifar10(staging, per_batch=10, n_test=10)
    archive = staging / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=CIFAR10_DIR)
    return archive, arrays


def test_official_sources_are_the_published_ones():
    assert RESOURCES["cifar10"] == (Resource("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                             "c58f30108f718f92721af3b95e74349a", True),)
    assert RESOURCES["cifar100"][0].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert RESOURCES["cifar100"][0].url.endswith("/~kriz/cifar-100-python.tar.gz")
    for name in ("mnist", "kmnist", "fashion_mnist"):
        assert [r.url.rsplit("/", 1)[-1] for r in RESOURCES[name]] == [
            "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
        assert all(len(r.md5) == 32 and not r.extract for r in RESOURCES[name])


def test_download_checks_md5_unpacks_and_the_loader_reads_it(cifar_tarball, tmp_path):
    archive, arrays = cifar_tarball
    progress = io.StringIO()
    resources = (Resource(archive.as_uri(), _md5(archive), True),)
    where = download("cifar10", tmp_path / "dl", resources=resources, progress=progress)
    assert where == tmp_path / "dl" / CIFAR10_DIR
    assert not (tmp_path / "dl" / archive.name).exists() and not list((tmp_path / "dl").glob("*.part"))
    assert f"cifar-10-python.tar.gz: {archive.stat().st_size / 1e6:.1f} MB of" in progress.getvalue()
    data = load("cifar10", str(tmp_path / "dl"), normalize="none")
    np.testing.assert_array_equal(data.test_x, arrays["test_x"].astype(np.float32))
    # already there: nothing is fetched (this URL would fail)
    missing = (Resource((tmp_path / "nowhere.tar.gz").as_uri(), "0" * 32, True),)
    assert download("cifar10", tmp_path / "dl", resources=missing, progress=None) == where


def test_a_wrong_md5_keeps_nothing(cifar_tarball, tmp_path):
    archive, _ = cifar_tarball
    with pytest.raises(DataError) as err:
        download("cifar10", tmp_path / "dl", resources=(Resource(archive.as_uri(), "0" * 32, True),), progress=None)
    message = str(err.value)
    assert "\n" not in message and f"but the published md5 is {'0' * 32}" in message and _md5(archive) in message
    assert list((tmp_path / "dl").iterdir()) == []


def test_unreachable_url_is_one_sentence(tmp_path):
    url = (tmp_path / "absent.tar.gz").as_uri()
    with pytest.raises(DataError, match=r"could not download file://.*absent\.tar\.gz .*run the command again"):
        download("cifar10", tmp_path / "dl", resources=(Resource(url, "0" * 32, True),), progress=None)


def test_idx_download_puts_the_four_files_where_the_loader_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    source = write_dataset(tmp_path / "mirror", n_train=20, n_test=10)
    resources = tuple(Resource(p.as_uri(), _md5(p)) for p in sorted(source.glob("*.gz")))
    where = download("kmnist", resources=resources, progress=None)
    assert where == tmp_path / "home/.cache/dst/kmnist"
    assert load("kmnist").train_x.shape == (20, 28, 28)


def test_archives_cannot_write_outside_the_folder(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match="cannot unpack .*evil.tar.gz"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped").exists()
    (tmp_path / "broken.tar.gz").write_bytes(gzip.compress(b"not a tar archive" * 100)[:50])
    with pytest.raises(DataError, match="cannot unpack .*broken.tar.gz"):
        extract(tmp_path / "broken.tar.gz", tmp_path / "out")


def test_help_lists_the_data_sets(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in DATASETS) and "download" in out and "generate" in out and "where" in out


@pytest.mark.parametrize("argv, complaint", [
    ([], "the following arguments are required: COMMAND"),
    (["download"], "the following arguments are required: NAME"),
    (["download", "mnist1d"], "invalid choice: 'mnist1d'"),
    (["generate", "cifar10"], "invalid choice: 'cifar10'"),
    (["fetch", "cifar10"], "invalid choice: 'fetch'"),
])
def test_argument_errors_exit_2_with_a_message(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and complaint in capsys.readouterr().err


def test_download_of_present_files_needs_no_network(tmp_path, capsys):
    write_cifar10(tmp_path, per_batch=2, n_test=2)
    assert main(["download", "cifar10", "--dir", str(tmp_path)]) == 0
    assert str(tmp_path / CIFAR10_DIR) in capsys.readouterr().out


def test_where_lists_the_places_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DST_DATA_DIR", str(tmp_path / "env"))
    assert main(["where", "cifar100"]) == 1
    out = capsys.readouterr().out
    places = [str(tmp_path / "env/cifar100"), str(tmp_path / "env"), str(tmp_path / ".cache/dst/cifar100"),
              "/usr/share/datasets/cifar100"]
    assert [out.index(p + "\n") for p in places] == sorted(out.index(p + "\n") for p in places)
    assert "cifar-100-python/ inside each" in out and "not found: " in out and "dst-data download cifar100" in out
    write_cifar10(tmp_path / ".cache/dst/cifar10", per_batch=2, n_test=2)
    assert main(["where", "cifar10"]) == 0
    assert f"found: {tmp_path / '.cache/dst/cifar10' / CIFAR10_DIR}" in capsys.readouterr().out
