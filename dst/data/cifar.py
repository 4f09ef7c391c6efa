"""CIFAR-10 and CIFAR-100 in their official python-pickle batches: where they are and how they read.

``cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``; ``cifar-100-python/``
holds ``train`` and ``test``. Each file is a python-2 pickle of a dict with bytes keys: ``b"data"``, a uint8
array ``(N, 3072)`` whose rows are the red, green and blue 32x32 planes one after the other, and the labels
(``b"labels"``; CIFAR-100: ``b"fine_labels"`` and ``b"coarse_labels"``). The unpickler only builds numpy
arrays, so a file that is not a CIFAR batch can never run code.
"""

from __future__ import annotations

import os
import pathlib
import pickle
from typing import NamedTuple

import numpy as np

from dst.data import lookup
from dst.data.errors import DataError

LABEL_MODES = ("fine", "coarse")
HOME_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_SHAPE = (32, 32, 3)


class CifarLayout(NamedTuple):
    folder: str              # the folder the official archive unpacks into
    archive: str             # the official archive's file name
    train: tuple[str, ...]
    test: tuple[str, ...]
    labels: dict[str, str]   # label_mode -> the dict key holding those labels
    num_classes: dict[str, int]


LAYOUTS = {
    "cifar10": CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           {"fine": "labels"}, {"fine": 10}),
    "cifar100": CifarLayout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",),
                            {"fine": "fine_labels", "coarse": "coarse_labels"}, {"fine": 100, "coarse": 20}),
}
NAMES = tuple(LAYOUTS)

# The only globals a CIFAR batch needs: numpy's array reconstruction (numpy 1 and 2 module paths).
# Python 3 writes the same arrays differently by protocol: protocol 2 stores their bytes as a latin-1
# string re-encoded through ``_codecs.encode``; protocol 5 rebuilds them with ``numeric._frombuffer``.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol 2 pickles of bytes call it, and no other use of it."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"it calls _codecs.encode with {encoding!r}, which a CIFAR batch never does")
    return text.encode("latin1")


_ALLOWED = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never does")


def _all_files(layout: CifarLayout) -> tuple[str, ...]:
    return layout.train + layout.test


def _holds(folder: pathlib.Path, layout: CifarLayout) -> bool:
    return all((folder / f).is_file() for f in _all_files(layout))


def _probe(layout: CifarLayout, folder: pathlib.Path) -> pathlib.Path | None:
    for candidate in (folder, folder / layout.folder):
        if _holds(candidate, layout):
            return candidate
    return None


def _missing(layout: CifarLayout, folder: pathlib.Path) -> str:
    inner = folder / layout.folder
    where = inner if inner.is_dir() else folder
    names = ", ".join(f for f in _all_files(layout) if not (where / f).is_file())
    if where == inner:
        return f"{inner} lacks {names}"
    return f"no {layout.folder} folder, and {folder} lacks {names}"


def how_to_get(name: str, folder) -> str:
    layout = LAYOUTS[name]
    return (f"run '{lookup.download_command(name, folder)}' (online), or unpack {layout.archive} from "
            f"{HOME_PAGE} into {folder}")


def locate(name: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder holding ``name``'s batch files (``data_dir`` may also be the folder holding that one)."""
    layout = LAYOUTS[name]
    return lookup.search(name, data_dir, lambda f: _probe(layout, f), missing=lambda f: _missing(layout, f),
                         how_to_get=lambda f: how_to_get(name, f), inside=layout.folder)


def _unpickle(path: pathlib.Path, name: str) -> dict:
    fix = f"delete it and get it again ('{lookup.download_command(name)}')"
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}.") from None
    except Exception as err:  # any unpickling failure means the same thing here
        reason = str(err).rstrip(".")
        raise DataError(f"{path} is not a complete CIFAR python batch (unpickling failed: {reason}); {fix}.") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR python batch: it holds a {type(batch).__name__}, not a dict.")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in batch.items()}


def read_batch(path, name: str = "cifar10", label_mode: str = "fine") -> tuple[np.ndarray, np.ndarray]:
    """One batch file as uint8 images ``(N, 32, 32, 3)`` and int32 labels; :class:`DataError` names the file."""
    path, layout = pathlib.Path(path), LAYOUTS[name]
    batch = _unpickle(path, name)
    key = layout.labels[label_mode]
    if key not in batch:
        other = next((n for n, lay in LAYOUTS.items() if n != name and set(lay.labels.values()) & set(batch)), None)
        keys = ", ".join(sorted(batch)) or "none"
        hint = f"it looks like a {other} file (use dataset.name={other})" if other else f"its keys are {keys}"
        raise DataError(f"{path} has no {key!r} labels, so it is not a {name} batch: {hint}.")
    if "data" not in batch:
        raise DataError(f"{path} has no 'data' entry, so it is not a {name} batch (its keys are "
                        f"{', '.join(sorted(batch))}).")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is {what}; a {name} batch holds uint8 rows of 3072 pixels (N, 3072).")
    try:
        labels = np.asarray(batch[key], dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.zeros((0, 0))
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(f"{path} holds {data.shape[0]} images but {labels.size} {key!r} labels "
                        f"(shape {labels.shape}); the file is corrupt.")
    classes = layout.num_classes[label_mode]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"{path} has {key!r} outside 0..{classes - 1} (from {labels.min()} to {labels.max()}), "
                        f"so it is not a {name} batch.")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int32)


def _read_files(folder: pathlib.Path, files, name, label_mode):
    parts = [read_batch(folder / f, name, label_mode) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read(folder: pathlib.Path, name: str, label_mode: str = "fine"):
    """``(train_x, train_y, test_x, test_y)``: uint8 NHWC images and int32 labels."""
    layout = LAYOUTS[name]
    if label_mode not in layout.labels:
        allowed = ", ".join(layout.labels)
        raise DataError(f"dataset.label_mode must be {allowed} for {name}; got {label_mode!r}.")
    return (*_read_files(folder, layout.train, name, label_mode), *_read_files(folder, layout.test, name, label_mode))
