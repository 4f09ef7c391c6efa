"""Small CIFAR-10/100 data sets in the official format, written by the tests themselves.

The official batches are python-2 ``cPickle`` files (protocol 2): dicts whose keys and strings are
python-2 ``str`` (so they load as ``bytes`` with ``encoding="bytes"``), ``b"data"`` a numpy uint8 array
``(N, 3072)`` of red, green and blue 32x32 planes, and labels as lists of ints; numpy arrays refer to
``numpy.core.multiarray._reconstruct``. :func:`py2_pickle` writes exactly those opcodes from Python 3.
"""

import io
import pathlib
import pickle
import struct

import numpy as np

CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as python 2 wrote it: every str/bytes is a BINSTRING, numpy lives in numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + struct.pack("<B", len(data)) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode("ascii"))
        self.memoize(obj)


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def to_rows(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 images -> the official (N, 3072) rows: the R plane, then G, then B, each row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)


def make_images(n, seed, classes=10):
    """Noise plus a bright band whose row and colour encode the label: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, channel = 2 + 2 * (label % 14), (label // 14) % 3
        images[i, row:row + 2, :, channel] = 230
    return images, labels


def write_batch(path, images, labels, label_key=b"labels", extra=None):
    batch = {b"batch_label": b"batch written by the tests", label_key: [int(v) for v in labels],
             b"data": to_rows(images), b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))]}
    batch.update(extra or {})
    pathlib.Path(path).write_bytes(py2_pickle(batch))


def write_cifar10(root, per_batch=50, n_test=50, seed=0, archive_layout=True):
    """``root/cifar-10-batches-py/`` (or ``root`` itself) with five training batches and a test batch.

    Returns the batch folder and the arrays: ``train_x`` NHWC uint8, ``train_y``, ``test_x``, ``test_y``.
    """
    folder = pathlib.Path(root) / CIFAR10_DIR if archive_layout else pathlib.Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i, name in enumerate(CIFAR10_TRAIN):
        x, y = make_images(per_batch, seed + i)
        write_batch(folder / name, x, y)
        xs.append(x)
        ys.append(y)
    test_x, test_y = make_images(n_test, seed + 10)
    write_batch(folder / "test_batch", test_x, test_y)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": names, b"num_cases_per_batch": per_batch}))
    return folder, {"train_x": np.concatenate(xs), "train_y": np.concatenate(ys), "test_x": test_x, "test_y": test_y}


def write_cifar100(root, n_train=100, n_test=50, seed=0, archive_layout=True):
    """``root/cifar-100-python/`` with ``train`` and ``test``; fine labels 0..99, coarse = fine // 5."""
    folder = pathlib.Path(root) / CIFAR100_DIR if archive_layout else pathlib.Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, fine = make_images(n, s, classes=100)
        coarse = fine // 5
        write_batch(folder / split, x, fine, b"fine_labels", {b"coarse_labels": [int(v) for v in coarse]})
        arrays.update({f"{split}_x": x, f"{split}_y": fine, f"{split}_coarse": coarse})
    (folder / "meta").write_bytes(py2_pickle({b"fine_label_names": [b"c%d" % i for i in range(100)],
                                              b"coarse_label_names": [b"s%d" % i for i in range(20)]}))
    return folder, arrays
