"""The MNIST family in IDX files (Fashion-MNIST, MNIST, KMNIST): where they are and how they read."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from dst.data import lookup
from dst.data.errors import DataError
from dst.data.idx import read_idx

NAMES = ("fashion_mnist", "mnist", "kmnist")
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


def find_file(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _probe(folder: pathlib.Path) -> pathlib.Path | None:
    return folder if all(find_file(folder, stem) for stem in FILES.values()) else None


def _missing(folder: pathlib.Path) -> str:
    return "missing: " + ", ".join(s for s in FILES.values() if not find_file(folder, s))


def how_to_get(name: str, folder) -> str:
    apt = ("run 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or "
           if name == "fashion_mnist" else "")
    files = ", ".join(f"{s}.gz" for s in FILES.values())
    return (f"{apt}put the four files {files} from {SOURCES[name]} into {folder}, or run "
            f"'{lookup.download_command(name, folder)}' when online")


def locate(name: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder holding ``name``'s four IDX files, or :class:`DataNotFoundError` in one sentence."""
    return lookup.search(name, data_dir, _probe, missing=_missing, how_to_get=lambda f: how_to_get(name, f))


def _read_split(folder: pathlib.Path, images: str, labels: str):
    x, y = read_idx(find_file(folder, FILES[images])), read_idx(find_file(folder, FILES[labels]))
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{folder}: {FILES[images]} has shape {x.shape} and {FILES[labels]} has shape "
                        f"{y.shape}; expected (N, H, W) images and N labels.")
    return x, y.astype(np.int32)


def read(folder: pathlib.Path):
    """``(train_x, train_y, test_x, test_y)``: uint8 images ``(N, 28, 28)`` and int32 labels."""
    return (*_read_split(folder, "train_images", "train_labels"), *_read_split(folder, "test_images", "test_labels"))
