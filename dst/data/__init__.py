"""Data loaders that return numpy arrays (the trainer moves them to the device)."""

from dst.data.datasets import DATASETS
from dst.data.datasets import DataNotFoundError
from dst.data.datasets import Dataset
from dst.data.datasets import load
from dst.data.datasets import locate
from dst.data.idx import DataError
from dst.data.idx import read_idx
from dst.data.idx import write_idx

__all__ = ["DATASETS", "DataError", "DataNotFoundError", "Dataset", "load", "locate", "read_idx", "write_idx"]
