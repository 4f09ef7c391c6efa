"""One entry point for every data set: where it is, how it loads, normalises and splits.

``load(name, data_dir, ...)`` returns a :class:`Dataset` of numpy arrays for
``fashion_mnist``, ``mnist``, ``kmnist`` (IDX files, images ``(N, 28, 28)``), ``cifar10``, ``cifar100``
(python-pickle batches, images ``(N, 32, 32, 3)``) and ``mnist1d`` (generated offline, signals ``(N, 40)``).
Files are looked up as described in :mod:`dst.data.lookup`; nothing is downloaded (``dst-data download``
does that for users who are online).
"""

from __future__ import annotations

import os
import pathlib
from typing import NamedTuple

import numpy as np

from dst.data import cifar
from dst.data import image_folder
from dst.data import mnist
from dst.data import mnist1d
from dst.data.errors import DataError
from dst.data.errors import DataNotFoundError
from dst.data.lookup import candidate_dirs

DATASETS = mnist.NAMES + cifar.NAMES + (mnist1d.NAME, image_folder.NAME)   # image_folder: streamed
NORMALIZATIONS = ("standard", "unit", "none")
LABEL_MODES = cifar.LABEL_MODES

__all__ = ["DATASETS", "LABEL_MODES", "NORMALIZATIONS", "DataError", "DataNotFoundError", "Dataset",
           "candidate_dirs", "load", "locate"]


def _constant(values) -> np.ndarray:
    array = np.asarray(values, np.float32)
    array.setflags(write=False)
    return array


class Dataset(NamedTuple):
    """Float32 inputs and int32 labels; ``val_*`` are empty without a split.

    Inputs are ``(N, 28, 28)`` for the IDX sets, ``(N, 32, 32, 3)`` for CIFAR, ``(N, 40)`` for MNIST-1D.
    ``mean`` and ``std`` (one entry per channel, in pixel/255 units) are what was applied:
    ``x = (pixel / 255 - mean) / std``; :attr:`pad_value` is therefore a black pixel after normalisation.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    mean: np.ndarray = _constant([0.0])
    std: np.ndarray = _constant([1.0])
    num_classes: int = 10
    name: str = ""

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def pad_value(self) -> np.ndarray:
        """The normalised value of a black (zero) pixel, per channel: what augmentation pads with."""
        return ((0.0 - self.mean) / self.std).astype(np.float32)


def locate(name: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder holding ``name``'s files (MNIST-1D: its cache file), or one-sentence :class:`DataNotFoundError`."""
    if name not in DATASETS:
        raise DataError(f"dataset.name must be one of {', '.join(DATASETS)}; got {name!r}.")
    if name in cifar.NAMES:
        return cifar.locate(name, data_dir)
    if name == mnist1d.NAME:
        return mnist1d.locate(data_dir)
    if name == image_folder.NAME:
        return image_folder.locate(data_dir)
    return mnist.locate(name, data_dir)


def _normalize_one_channel(train_x, test_x, normalize):
    """The IDX sets' normalisation, unchanged: one mean and std over all training pixels."""
    train_x, test_x = train_x.astype(np.float32), test_x.astype(np.float32)
    mean, std = np.float32(0.0), np.float32(1.0)
    if normalize == "unit":
        train_x, test_x = train_x / 255.0, test_x / 255.0
    elif normalize == "standard":
        mean, std = train_x.mean() / 255.0, train_x.std() / 255.0
        train_x = (train_x / 255.0 - mean) / std
        test_x = (test_x / 255.0 - mean) / std
    else:
        std = np.float32(1.0 / 255.0)
    return train_x, test_x, _constant([mean]), _constant([std])


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of uint8 NHWC images, in pixel/255 units (float64 from histograms)."""
    values = np.arange(256, dtype=np.float64)
    mean, std = [], []
    for c in range(images.shape[-1]):
        counts = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        n = counts.sum()
        m = (counts @ values) / n
        mean.append(m / 255.0)
        std.append(np.sqrt(max((counts @ values**2) / n - m * m, 0.0)) / 255.0)
    return np.array(mean), np.array(std)


def _normalize_channels(train_x, test_x, normalize):
    """Per-channel normalisation of uint8 NHWC images (torchvision's Normalize with the data's statistics)."""
    channels = train_x.shape[-1]
    mean, std = np.zeros(channels), np.ones(channels)
    if normalize == "standard":
        mean, std = channel_stats(train_x)
        if np.any(std == 0):
            raise DataError(f"dataset.normalize=standard needs varying pixels, but channel "
                            f"{int(np.argmin(std))} of the training images is constant; use normalize=unit.")
    elif normalize == "none":
        std = np.full(channels, 1.0 / 255.0)
    mean, std = _constant(mean), _constant(std)

    def apply(x):
        out = x.astype(np.float32)
        out *= np.float32(1.0 / 255.0)
        out -= mean
        out /= std
        return out

    return apply(train_x), apply(test_x), mean, std


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)``: the rows of the training files that :func:`load` with ``seed`` puts in
    its training and validation sets, in that order (a permutation from ``seed``)."""
    n_val = int(round(val_fraction * n))
    order = np.random.default_rng(seed).permutation(n)
    return order[n_val:], order[:n_val]


def numpy_subset(n_train: int, n_test: int, train: int, test: int, numpy_seed: int):
    """``(train_rows, test_rows)``: ``np.random.seed(numpy_seed)``, then ``np.random.shuffle`` of
    ``arange(n_train)`` and of ``arange(n_test)``, in that order; the first ``train`` and ``test`` of each
    (how the SET tutorial code picks its 2,000 / 1,000 Fashion-MNIST images)."""
    rng = np.random.RandomState(numpy_seed)   # the legacy generator np.random.seed seeds
    train_rows, test_rows = np.arange(n_train), np.arange(n_test)
    rng.shuffle(train_rows)
    rng.shuffle(test_rows)
    return train_rows[:train], test_rows[:test]


def _subset(arrays, subset):
    train_x, train_y, test_x, test_y = arrays
    if not subset:
        return train_x, train_y, test_x, test_y
    unknown = set(subset) - {"train", "test", "numpy_seed"}
    counts = (subset.get("train"), subset.get("test"))
    if unknown or not all(isinstance(c, int) and c > 0 for c in counts):
        raise DataError(f"dataset.subset must be {{train: N, test: M, numpy_seed: S}} with positive N and M; "
                        f"got {dict(subset)}.")
    if counts[0] > len(train_y) or counts[1] > len(test_y):
        raise DataError(f"dataset.subset asks for {counts[0]} train / {counts[1]} test rows; the files have "
                        f"{len(train_y)} / {len(test_y)}.")
    tr, te = numpy_subset(len(train_y), len(test_y), *counts, int(subset.get("numpy_seed", 0)))
    return train_x[tr], train_y[tr], test_x[te], test_y[te]


def _split(train_x, train_y, val_fraction, seed):
    if seed is None:        # keep_order: the training files as they are, no validation split
        return train_x, train_y, train_x[:0], train_y[:0]
    train_idx, val_idx = split_indices(train_x.shape[0], val_fraction, seed)
    return train_x[train_idx], train_y[train_idx], train_x[val_idx], train_y[val_idx]


def _check_options(name, normalize, val_fraction, label_mode):
    if name not in DATASETS:
        raise DataError(f"dataset.name must be one of {', '.join(DATASETS)}; got {name!r}.")
    if normalize not in NORMALIZATIONS:
        raise DataError(f"dataset.normalize must be one of {', '.join(NORMALIZATIONS)}; got {normalize!r}.")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"dataset.val_fraction must be in [0, 1); got {val_fraction}.")
    if label_mode not in LABEL_MODES:
        raise DataError(f"dataset.label_mode must be one of {', '.join(LABEL_MODES)}; got {label_mode!r}.")
    if label_mode != "fine" and name != "cifar100":
        raise DataError(f"dataset.label_mode={label_mode} applies to cifar100 only; {name} has one label set "
                        f"(use label_mode=fine).")
    if name == mnist1d.NAME and normalize == "unit":
        raise DataError("dataset.normalize=unit needs pixel data, but mnist1d's generator already standardises "
                        "its signals; use normalize=standard or none (both keep the published values).")


def load(name: str, data_dir: str | os.PathLike | None = None, *, val_fraction: float = 0.0, seed: int | None = 0,
         normalize: str = "standard", label_mode: str = "fine", subset: dict | None = None) -> Dataset:
    """Load a data set as numpy arrays.

    ``normalize``: ``standard`` (zero mean, unit variance with the training set's statistics; per channel
    for colour images), ``unit`` (pixels / 255) or ``none`` (raw 0..255 as float32). MNIST-1D keeps its
    generator's standardised values under ``standard`` and ``none``. ``val_fraction`` of the training set,
    chosen by a permutation from ``seed``, becomes the validation split (and the training set comes in
    that permutation's order); ``seed=None`` keeps the files' order and splits nothing, for callers
    that pick rows themselves with :func:`split_indices`. ``label_mode``: CIFAR-100's ``fine`` (100
    classes) or ``coarse`` (20 super-classes) labels. ``subset`` (``{"train": n, "test": m,
    "numpy_seed": s}``) keeps only the rows :func:`numpy_subset` picks, before normalising.
    """
    _check_options(name, normalize, val_fraction, label_mode)
    if name == image_folder.NAME:
        raise DataError("dataset.name=image_folder is streamed, not loaded: use dst.data.image_folder.scan.")
    if name == mnist1d.NAME:
        arrays, source = mnist1d.load(data_dir)
        train_x, train_y, test_x, test_y = _subset([arrays[k] for k in mnist1d.KEYS], subset)
        mean, std, classes = _constant([0.0]), _constant([1.0]), 10
    else:
        folder = locate(name, data_dir)
        source = folder
        if name in cifar.NAMES:
            train_x, train_y, test_x, test_y = _subset(cifar.read(folder, name, label_mode), subset)
            train_x, test_x, mean, std = _normalize_channels(train_x, test_x, normalize)
            classes = cifar.LAYOUTS[name].num_classes[label_mode]
        else:
            train_x, train_y, test_x, test_y = _subset(mnist.read(folder), subset)
            train_x, test_x, mean, std = _normalize_one_channel(train_x, test_x, normalize)
            classes = 10
    train_x, train_y, val_x, val_y = _split(train_x, train_y, val_fraction, seed)
    return Dataset(train_x, train_y, val_x, val_y, test_x, test_y, str(source), mean, std, classes, name)
