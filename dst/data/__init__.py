"""Data loaders that return numpy arrays (the trainer moves them to the device), and on-device augmentation."""

from dst.data.augment import make_augment
from dst.data.augment import random_crop_flip
from dst.data.datasets import DATASETS
from dst.data.datasets import LABEL_MODES
from dst.data.datasets import NORMALIZATIONS
from dst.data.datasets import Dataset
from dst.data.datasets import load
from dst.data.datasets import locate
from dst.data.errors import DataError
from dst.data.errors import DataNotFoundError
from dst.data.idx import read_idx
from dst.data.idx import write_idx

__all__ = [
    "DATASETS",
    "LABEL_MODES",
    "NORMALIZATIONS",
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "load",
    "locate",
    "make_augment",
    "random_crop_flip",
    "read_idx",
    "write_idx",
]
