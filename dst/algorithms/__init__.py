"""Sparse-training algorithms behind one protocol and registry (see :mod:`dst.algorithms.base`)."""

from dst.algorithms.base import PruneRegrowState, SparseAlgorithm, magnitude_drop, prune_and_regrow
from dst.algorithms.registry import make, names, register
from dst.algorithms.rigl import rigl
from dst.algorithms.set import set_, sign_split_drop
from dst.algorithms.static import dense, static

__all__ = [
    "PruneRegrowState",
    "SparseAlgorithm",
    "dense",
    "factory",
    "magnitude_drop",
    "make",
    "names",
    "prune_and_regrow",
    "register",
    "rigl",
    "set_",
    "sign_split_drop",
    "static",
]
