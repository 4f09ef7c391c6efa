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
                     update_every: int | None = None, start_step: int = 0, end_step: int | None = None,
                     f_backward: float | None = None) -> float:
    """Average training FLOPs of one step at ``step`` for ``algorithm`` (RigL appendix accounting).

    dense ``3 f_D``; static, SET, MEST, SNIP, GraSP, GMP ``3 f_S`` (at the current density); RigL and
    GraNet ``(3 f_S dT + 2 f_S + f_D) / (dT + 1)`` during updates (one dense gradient every ``dT``);
    SNFS ``2 f_S + f_D`` (a dense gradient every step for its momentum); Top-KAST ``2 f_S + f_B``
    (weight gradients over the backward set).
    """
    if algorithm == "dense":
        return 3.0 * f_dense
    if algorithm == "snfs":
        return 2.0 * f_sparse + f_dense
    if algorithm == "topkast":
        return 2.0 * f_sparse + (f_backward if f_backward is not None else f_sparse)
    if algorithm in ("rigl", "granet") and update_every and end_step and start_step <= step < end_step:
        return (3.0 * f_sparse * update_every + 2.0 * f_sparse + f_dense) / (update_every + 1)
    return 3.0 * f_sparse


def itop_rate(ever_active, layers: Iterable[str]) -> float:
    """Fraction of the sparsifiable weights that have been active at any time so far."""
    named = named_leaves(ever_active)
    active = sum(int(np.count_nonzero(np.asarray(named[n]))) for n in layers)
    size = sum(int(named[n].size) for n in layers)
    return active / size if size else 1.0


def dead_units(masks, layers: list[str]) -> dict[str, int]:
    """Hidden units with no incoming or no outgoing active connection, per layer.

    ``layers`` are the kernels in forward order (a sequential model). The units of kernel ``l`` are
    its output channels (last axis); their incoming weights are the rest of that kernel, their
    outgoing weights the next kernel's input rows for that channel. When the next kernel takes a
    flattened ``(..., channels)`` input (conv followed by dense), every row ``r`` with
    ``r % channels == c`` belongs to channel ``c``. The last kernel (the logits) has no hidden units.
    """
    named = named_leaves(masks)
    out = {}
    for here, nxt in zip(layers, layers[1:]):
        m, m_next = np.asarray(named[here]), np.asarray(named[nxt])
        units = m.shape[-1]
        incoming = m.reshape(-1, units).any(axis=0)
        rows = m_next.reshape(-1, m_next.shape[-1]) if m_next.ndim == 2 else \
            np.moveaxis(m_next, -2, 0).reshape(m_next.shape[-2], -1)
        if rows.shape[0] % units:
            continue  # not a sequential pair this rule understands: report nothing rather than guess
        outgoing = rows.reshape(-1, units, rows.shape[-1]).any(axis=(0, 2))
        out[here] = int(np.count_nonzero(~(incoming & outgoing)))
    return out
