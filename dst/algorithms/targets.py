"""Per-layer target counts shared by the algorithms that change layer sizes (GMP, MEST decay, Top-KAST)."""

from __future__ import annotations

import jax.numpy as jnp

from dst.distributions import layer_densities
from dst.masks import active_count
from dst.masks import named_leaves


def final_counts(params, sparsity, distribution="erk", *, erk_power_scale=1.0, dense_layers=(),
                 sparsifiable=None) -> dict[str, int]:
    """``{layer: round(d_l * N_l)}`` for the final densities of ``distribution`` at ``sparsity``.

    Only shapes are read, so this works on traced params inside ``init``.
    """
    densities = layer_densities(params, sparsity, distribution, erk_power_scale=erk_power_scale,
                                sparsifiable=sparsifiable, dense_layers=dense_layers)
    leaves = named_leaves(params)
    return {name: active_count(d, leaves[name].size) for name, d in densities.items()}


def mask_counts(masks, names) -> dict[str, jnp.ndarray]:
    leaves = named_leaves(masks)
    return {n: jnp.sum(leaves[n], dtype=jnp.int32) for n in names}


def check_sparsity(name: str, value, *, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {value!r}.")
