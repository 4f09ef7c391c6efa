"""Data loaders that return numpy arrays (the trainer moves them to the device)."""

from dst.data.datasets import DATASETS, DataNotFoundError, Dataset, load, locate
from dst.data.idx import DataError, read_idx, write_idx

__all__ = ["DATASETS", "DataError", "DataNotFoundError", "Dataset", "load", "locate", "read_idx", "write_idx"]
