"""Run metrics: per-layer density, ITOP rate, theoretical training FLOPs.

FLOPs follow the RigL paper's appendix: with ``f_D`` the dense and ``f_S`` the sparse forward cost of
one example, a training step costs ``3 f_S`` for static sparse training (forward, input gradient,
weight gradient), ``3 f_D`` dense, and RigL ``(3 f_S dT + 2 f_S + f_D) / (dT + 1)`` on average, since
every ``dT`` steps it needs one dense weight gradient.
"""

from __future__ import annotations

from collections.abc import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dst.masks import named_leaves


def layer_flops(model: nn.Module, params, input_shape) -> dict[str, float]:
    """Forward FLOPs per example (2 per multiply-add) of every kernel, keyed ``"<module>/kernel"``.

    A dense kernel costs ``2 * size``; a conv kernel ``2 * size * (output positions)``, read from the
    shapes of one traced forward pass, so any linen model with Dense/Conv modules works.
    """
    x = jnp.zeros((1,) + tuple(input_shape[1:]) if len(input_shape) > 1 else (1,) + tuple(input_shape))
    _, state = jax.eval_shape(
        lambda p: model.apply({"params": p}, x, capture_intermediates=True, mutable=["intermediates"]),
        params)
    outputs = named_leaves(state["intermediates"])
    flops = {}
    for name, kernel in named_leaves(params).items():
        if kernel.ndim < 2:
            continue
        module = name.rsplit("/", 1)[0]
        out = outputs.get(f"{module}/__call__/0")
        positions = int(np.prod(out.shape[1:-1])) if out is not None and kernel.ndim > 2 else 1
        flops[name] = 2.0 * kernel.size * positions
    return flops


def sparse_forward_flops(flops: dict[str, float], densities: dict[str, float]) -> float:
    """``f_S``: forward FLOPs with each layer scaled by its density (layers not listed are dense)."""
    return sum(f * densities.get(name, 1.0) for name, f in flops.items())


def train_step_flops(algorithm: str, f_sparse: float, f_dense: float, step: int, *,
                     update_every: int | None = None, start_step: int = 0,
                     end_step: int | None = None) -> float:
    """Average training FLOPs of one step at ``step`` for ``algorithm`` (RigL appendix accounting)."""
    if algorithm == "dense":
        return 3.0 * f_dense
    if algorithm == "rigl" and update_every and end_step and start_step <= step < end_step:
        return (3.0 * f_sparse * update_every + 2.0 * f_sparse + f_dense) / (update_every + 1)
    return 3.0 * f_sparse


def itop_rate(ever_active, layers: Iterable[str]) -> float:
    """Fraction of the sparsifiable weights that have been active at any time so far."""
    named = named_leaves(ever_active)
    active = sum(int(np.count_nonzero(np.asarray(named[n]))) for n in layers)
    size = sum(int(named[n].size) for n in layers)
    return active / size if size else 1.0
