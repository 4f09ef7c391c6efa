"""IDX image-classification data sets: where they are, how they load, how they split.

Lookup order for a data set ``name`` (first hit wins):

1. ``data_dir`` when given: it must hold the files (no fallback, so a typo never trains on other data);
2. ``$DST_DATA_DIR/<name>``, then ``$DST_DATA_DIR``;
3. ``~/.cache/dst/<name>``;
4. ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist`` installs there).

``<name>`` is tried as written and with ``_`` as ``-`` (``fashion_mnist`` -> ``fashion-mnist``).
Nothing is downloaded.
"""

from __future__ import annotations

import os
import pathlib
from typing import NamedTuple

import numpy as np

from dst.data.idx import DataError
from dst.data.idx import read_idx

DATASETS = ("fashion_mnist", "mnist", "kmnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SOURCES = {
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist (data/fashion)",
    "mnist": "https://yann.lecun.com/exdb/mnist/ (or any MNIST mirror)",
    "kmnist": "https://github.com/rois-codh/kmnist (the IDX .gz files)",
}
NORMALIZATIONS = ("standard", "unit", "none")


class DataNotFoundError(DataError):
    """The data set's files are not where the loader looked."""


class Dataset(NamedTuple):
    """Float32 images ``(N, 28, 28)`` and int32 labels; ``val_*`` are empty without a split."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str


def _find(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _holds_all(folder: pathlib.Path) -> bool:
    return all(_find(folder, stem) for stem in FILES.values())


def candidate_dirs(name: str) -> list[pathlib.Path]:
    """The folders searched when no ``data_dir`` is given, in order."""
    names = list(dict.fromkeys([name, name.replace("_", "-")]))
    dirs = []
    env = os.environ.get("DST_DATA_DIR")
    if env:
        dirs += [pathlib.Path(env) / n for n in names] + [pathlib.Path(env)]
    dirs += [pathlib.Path.home() / ".cache" / "dst" / n for n in names]
    dirs += [pathlib.Path("/usr/share/datasets") / n for n in names]
    return dirs


def how_to_get(name: str, folder: str) -> str:
    apt = ("run 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or "
           if name == "fashion_mnist" else "")
    files = ", ".join(f"{s}.gz" for s in FILES.values())
    return f"{apt}put the four files {files} from {SOURCES[name]} into {folder}"


def locate(name: str, data_dir: str | None = None) -> pathlib.Path:
    """The folder holding ``name``'s four IDX files, or :class:`DataNotFoundError` in one sentence."""
    if name not in DATASETS:
        raise DataError(f"dataset.name must be one of {', '.join(DATASETS)}; got {name!r}.")
    if data_dir:
        folder = pathlib.Path(data_dir).expanduser()
        if _holds_all(folder):
            return folder
        missing = [s for s in FILES.values() if not _find(folder, s)]
        raise DataNotFoundError(
            f"dataset.data_dir={str(folder)!r} does not hold the {name} files (missing: "
            f"{', '.join(missing)}); {how_to_get(name, str(folder))}.")
    searched = candidate_dirs(name)
    for folder in searched:
        if _holds_all(folder):
            return folder
    raise DataNotFoundError(
        f"{name} was not found in {', '.join(str(d) for d in searched)}; "
        f"{how_to_get(name, str(pathlib.Path.home() / '.cache' / 'dst' / name))} "
        f"(or set dataset.data_dir or $DST_DATA_DIR).")


def _read_split(folder: pathlib.Path, images: str, labels: str):
    x, y = read_idx(_find(folder, FILES[images])), read_idx(_find(folder, FILES[labels]))
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{folder}: {FILES[images]} has shape {x.shape} and {FILES[labels]} has shape "
                        f"{y.shape}; expected (N, H, W) images and N labels.")
    return x, y.astype(np.int32)


def load(name: str, data_dir: str | None = None, *, val_fraction: float = 0.0, seed: int = 0,
         normalize: str = "standard") -> Dataset:
    """Load a data set as numpy arrays.

    ``normalize``: ``standard`` (zero mean, unit variance with the training set's statistics),
    ``unit`` (pixels / 255) or ``none`` (raw 0..255 as float32). ``val_fraction`` of the training set,
    chosen by a permutation from ``seed``, becomes the validation split.
    """
    if normalize not in NORMALIZATIONS:
        raise DataError(f"dataset.normalize must be one of {', '.join(NORMALIZATIONS)}; got {normalize!r}.")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"dataset.val_fraction must be in [0, 1); got {val_fraction}.")
    folder = locate(name, data_dir)
    train_x, train_y = _read_split(folder, "train_images", "train_labels")
    test_x, test_y = _read_split(folder, "test_images", "test_labels")

    train_x, test_x = train_x.astype(np.float32), test_x.astype(np.float32)
    if normalize == "unit":
        train_x, test_x = train_x / 255.0, test_x / 255.0
    elif normalize == "standard":
        mean, std = train_x.mean() / 255.0, train_x.std() / 255.0
        train_x = (train_x / 255.0 - mean) / std
        test_x = (test_x / 255.0 - mean) / std

    n_val = int(round(val_fraction * train_x.shape[0]))
    order = np.random.default_rng(seed).permutation(train_x.shape[0])
    val_idx, train_idx = order[:n_val], order[n_val:]
    return Dataset(train_x[train_idx], train_y[train_idx], train_x[val_idx], train_y[val_idx],
                   test_x, test_y, str(folder))
