"""Small, real, learnable IDX data sets written by the tests themselves."""

import pathlib

import numpy as np

from dst.data import write_idx

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def make_images(n, seed, classes=10):
    """Noise plus a bright horizontal band whose row encodes the label: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label: 4 + 2 * label, :] = 230
    return images, labels


def write_dataset(folder, n_train=640, n_test=200, gz=True, seed=0) -> pathlib.Path:
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    train_x, train_y = make_images(n_train, seed)
    test_x, test_y = make_images(n_test, seed + 1)
    for name, array in zip(FILES, (train_x, train_y, test_x, test_y)):
        write_idx(folder / f"{name}{suffix}", array)
    return folder
