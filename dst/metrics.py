"""Run metrics: per-layer forward FLOPs, ITOP rate, dead units, training FLOPs.

Training FLOPs follow the RigL paper's appendix; each algorithm states its own accounting
(:mod:`dst.algorithms.accounting`), so this module knows no algorithm by name.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax.numpy as jnp
import numpy as np

from dst.algorithms.accounting import sparse_step_flops
from dst.distributions import sparsifiable_layers
from dst.graph import kernel_graph
from dst.masks import named_leaves


def layer_flops(apply_fn, params, model_state, sample_x, layers=None) -> dict[str, float]:
    """Forward FLOPs of one example (2 per multiply-add) of every kernel in ``layers`` (default: every
    sparsifiable leaf), read from one abstractly traced forward pass in evaluation mode: dense layers
    count each token or position they are applied to, convolutions each output position.
    """
    layers = sparsifiable_layers(params) if layers is None else list(layers)
    x = jnp.zeros((1,) + tuple(sample_x.shape[1:]), sample_x.dtype)
    forward = lambda p: apply_fn(p, model_state, x, False, None)[0]
    return kernel_graph(forward, params, layers).flops


def sparse_forward_flops(flops: dict[str, float], densities: dict[str, float]) -> float:
    """``f_S``: forward FLOPs with each layer scaled by its density (layers not listed are dense)."""
    return sum(f * densities.get(name, 1.0) for name, f in flops.items())


def train_step_flops(algo, step: int, f_sparse: float, f_dense: float, f_backward: float | None = None) -> float:
    """Training FLOPs of one example at ``step``, as the algorithm accounts for them (its ``train_flops``
    hook, :mod:`dst.algorithms.accounting`); ``3 f_S`` for algorithms without one."""
    f_backward = f_sparse if f_backward is None else f_backward
    flops = algo.train_flops or sparse_step_flops
    return flops(step, f_sparse, f_dense, f_backward)


def itop_rate(ever_active, layers: Iterable[str]) -> float:
    """Fraction of the sparsifiable weights that have been active at any time so far."""
    named = named_leaves(ever_active)
    active = sum(int(np.count_nonzero(np.asarray(named[n]))) for n in layers)
    size = sum(int(named[n].size) for n in layers)
    return active / size if size else 1.0


def dead_units(masks, pairs: Iterable[tuple[str, str]], counts=None) -> dict[str, int]:
    """Hidden units with no incoming or no outgoing active connection, for each sequential pair.

    ``pairs`` are ``(producer, consumer)`` kernels where the consumer reads only the producer's output
    (:func:`dst.graph.kernel_graph`; residual blocks have none). The units of the producer are its
    output channels (last axis); their incoming weights are the rest of that kernel, their outgoing
    weights the consumer's input rows for that channel. When the consumer takes a flattened
    ``(..., channels)`` input (conv followed by dense), every row ``r`` with ``r % channels == c``
    belongs to channel ``c``. A pair whose shapes do not fit this rule reports nothing. ``counts``:
    ``{layer: dst.train.stored.UnitCounts}`` read in the place of those layers' masks (born-sparse layers).
    """
    named = named_leaves(masks)
    counts = counts or {}
    out = {}
    for here, nxt in pairs:
        if here in counts:
            incoming = counts[here].fan_in > 0
        else:
            m = np.asarray(named[here])
            incoming = m.reshape(-1, m.shape[-1]).any(axis=0)
        units = incoming.size
        if nxt in counts:
            row_used = counts[nxt].fan_out > 0
        else:
            m_next = np.asarray(named[nxt])
            rows = m_next.reshape(-1, m_next.shape[-1]) if m_next.ndim == 2 else \
                np.moveaxis(m_next, -2, 0).reshape(m_next.shape[-2], -1)
            row_used = rows.any(axis=1)
        if row_used.size % units:
            continue  # not a pairing this rule understands: report nothing rather than guess
        outgoing = row_used.reshape(-1, units).any(axis=0)
        out[here] = int(np.count_nonzero(~(incoming & outgoing)))
    return out
