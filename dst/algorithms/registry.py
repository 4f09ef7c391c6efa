"""Name -> factory registry behind :func:`dst.algorithms.make`."""

from __future__ import annotations

from collections.abc import Callable

from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.gmp import gmp
from dst.algorithms.granet import granet
from dst.algorithms.imp import imp
from dst.algorithms.mest import mest
from dst.algorithms.rigl import rigl
from dst.algorithms.saliency import grasp
from dst.algorithms.saliency import snip
from dst.algorithms.set import set_
from dst.algorithms.snfs import snfs
from dst.algorithms.srigl import srigl
from dst.algorithms.static import dense
from dst.algorithms.static import static
from dst.algorithms.topkast import topkast

_REGISTRY: dict[str, Callable[..., SparseAlgorithm]] = {
    "dense": dense,
    "static": static,
    "set": set_,
    "rigl": rigl,
    "snfs": snfs,
    "srigl": srigl,
    "gmp": gmp,
    "snip": snip,
    "grasp": grasp,
    "mest": mest,
    "granet": granet,
    "imp": imp,
    "topkast": topkast,
}


def names() -> list[str]:
    """The registered algorithm names."""
    return sorted(_REGISTRY)


def register(name: str, factory: Callable[..., SparseAlgorithm]) -> None:
    """Add an algorithm factory under ``name`` (raises if the name is taken)."""
    if name in _REGISTRY:
        raise ValueError(f"algorithm {name!r} is already registered.")
    _REGISTRY[name] = factory


def factory(name: str) -> Callable[..., SparseAlgorithm]:
    """The factory registered under ``name`` (to inspect its hyper-parameters)."""
    if name not in _REGISTRY:
        raise ValueError(f"algorithm must be one of {', '.join(names())}; got {name!r}.")
    return _REGISTRY[name]


def make(name: str, **hparams) -> SparseAlgorithm:
    """Build a registered algorithm: ``make("rigl", update_every=100, end_step=7500)``."""
    build = factory(name)
    try:
        return build(**hparams)
    except TypeError as err:
        raise ValueError(f"bad hyper-parameters for algorithm {name!r}: {err}.") from None
