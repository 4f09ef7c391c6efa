"""Sparse-training algorithms behind one protocol and registry (see :mod:`dst.algorithms.base`)."""

from dst.algorithms.base import PruneRegrowState
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import magnitude_drop
from dst.algorithms.base import prune_and_regrow
from dst.algorithms.registry import make
from dst.algorithms.registry import names
from dst.algorithms.registry import register
from dst.algorithms.rigl import rigl
from dst.algorithms.set import set_
from dst.algorithms.set import sign_split_drop
from dst.algorithms.static import dense
from dst.algorithms.static import static

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
