"""Sparse-training algorithms behind one protocol and registry (see :mod:`dst.algorithms.base`)."""

from dst.algorithms.base import PruneRegrowState
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import magnitude_drop
from dst.algorithms.base import prune_and_regrow
from dst.algorithms.gmp import gmp
from dst.algorithms.granet import granet
from dst.algorithms.imp import imp
from dst.algorithms.mest import mest
from dst.algorithms.registry import factory
from dst.algorithms.registry import make
from dst.algorithms.registry import names
from dst.algorithms.registry import register
from dst.algorithms.rigl import rigl
from dst.algorithms.saliency import grasp
from dst.algorithms.saliency import snip
from dst.algorithms.set import set_
from dst.algorithms.set import sign_split_drop
from dst.algorithms.snfs import snfs
from dst.algorithms.srigl import srigl
from dst.algorithms.static import dense
from dst.algorithms.static import static
from dst.algorithms.topkast import topkast

__all__ = [
    "PruneRegrowState",
    "SparseAlgorithm",
    "dense",
    "factory",
    "gmp",
    "granet",
    "grasp",
    "imp",
    "magnitude_drop",
    "make",
    "mest",
    "names",
    "prune_and_regrow",
    "register",
    "rigl",
    "set_",
    "sign_split_drop",
    "snfs",
    "snip",
    "srigl",
    "static",
    "topkast",
]
