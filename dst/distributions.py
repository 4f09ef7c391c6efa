"""Per-layer densities for a global sparsity: ``uniform``, ``er`` and ``erk``.

The result is a ``{layer name: density}`` dict over the sparsifiable layers only; every other leaf is
dense. Feed it to :func:`dst.init_masks`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Iterable

import numpy as np

from dst.masks import dense_by_name
from dst.masks import named_leaves

DISTRIBUTIONS = ("uniform", "er", "erk")

# A filter decides, from a leaf's path name and shape, whether the leaf may be sparsified.
SparsifiableFilter = Callable[[str, tuple[int, ...]], bool]


def default_sparsifiable(name: str, shape: tuple[int, ...]) -> bool:
    """Kernels (``ndim >= 2``) are sparsifiable; biases, norm scales (1-D) and leaves named like
    ``DENSE_BY_NAME`` (embeddings, position embeddings, class tokens) are not."""
    return len(shape) >= 2 and not dense_by_name(name)


def sparsifiable_layers(params, sparsifiable: SparsifiableFilter | None = None,
                        dense_layers: Iterable[str] = ()) -> list[str]:
    """Names of the leaves that will be sparse.

    ``dense_layers`` are regular expressions matched (``re.search``) against path names; matching
    leaves stay dense and are left out of the sparsity budget (as rigl's ``custom_sparsity_map``).
    """
    keep = sparsifiable or default_sparsifiable
    patterns = [re.compile(p) for p in dense_layers]
    return [name for name, leaf in named_leaves(params).items()
            if keep(name, tuple(leaf.shape)) and not any(p.search(name) for p in patterns)]


def _raw_density(shape: tuple[int, ...], distribution: str, power: float) -> float:
    if distribution == "er":
        # SET's Erdos-Renyi: (n_in + n_out) / (n_in * n_out); a conv kernel's last two dims are in/out.
        n_in, n_out = shape[-2], shape[-1]
        return (n_in + n_out) / (n_in * n_out)
    return (sum(shape) / float(np.prod(shape))) ** power


def epsilon_densities(params, epsilon: float, *, sparsifiable: SparsifiableFilter | None = None,
                      dense_layers: Iterable[str] = ()) -> dict[str, float]:
    """SET's Erdos-Renyi densities from ``epsilon`` itself: ``d_l = min(1, eps (n_in + n_out) / (n_in n_out))``,
    so a layer holds ``eps (n_in + n_out)`` weights whatever the others hold (:func:`layer_densities`'s
    ``er`` solves ``eps`` for a global sparsity instead).

    References:
        Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive sparse
        connectivity"; Liu et al. 2021, "Sparse evolutionary deep learning with over one million
        artificial neurons on commodity hardware" (epsilon = 20).
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive; got {epsilon}.")
    leaves = named_leaves(params)
    return {n: min(1.0, epsilon * _raw_density(tuple(leaves[n].shape), "er", 1.0))
            for n in sparsifiable_layers(params, sparsifiable, dense_layers)}


def layer_densities(params, sparsity: float, distribution: str = "erk", *, erk_power_scale: float = 1.0,
                    sparsifiable: SparsifiableFilter | None = None,
                    dense_layers: Iterable[str] = ()) -> dict[str, float]:
    """Densities of the sparsifiable layers so that the total active count is ``(1 - S) * sum N_l``.

    * ``uniform``: every layer at ``1 - S``.
    * ``er``: ``d_l = eps * (n_in + n_out) / (n_in * n_out)``.
    * ``erk``: ``d_l = eps * (sum of kernel dims / product of kernel dims) ** erk_power_scale``.

    For ``er``/``erk``, ``eps`` solves ``sum_l d_l N_l = (1 - S) sum_l N_l``. When some ``d_l > 1``,
    the layer with the largest raw density is made dense, its ``N_l`` is taken out of the budget, and
    ``eps`` is solved again over the rest, until every ``d_l <= 1``.

    References:
        Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive sparse
        connectivity" (ER); Evci et al. 2020, "Rigging the Lottery" (ERK, appendix).

    Example::

        >>> layer_densities(lenet300_params, 0.9, "erk")   # doctest: +SKIP
        {'Dense_0/kernel': 0.0796, 'Dense_1/kernel': 0.2302, 'Dense_2/kernel': 1.0}
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}.")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity}.")
    leaves = named_leaves(params)
    names = sparsifiable_layers(params, sparsifiable, dense_layers)
    if not names:
        raise ValueError("no sparsifiable layers: the filter and dense_layers leave every leaf dense.")
    if distribution == "uniform" or sparsity == 0.0:
        return {n: 1.0 - sparsity for n in names}

    sizes = {n: int(np.prod(leaves[n].shape)) for n in names}
    raw = {n: _raw_density(tuple(leaves[n].shape), distribution, erk_power_scale) for n in names}
    budget = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [n for n in names if n not in dense]
        eps = (budget - sum(sizes[n] for n in dense)) / sum(raw[n] * sizes[n] for n in free)
        over = [n for n in free if eps * raw[n] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda n: raw[n]))
    return {n: 1.0 if n in dense else eps * raw[n] for n in names}
