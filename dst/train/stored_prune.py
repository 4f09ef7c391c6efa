"""Pruning stored layers in place (``csr``): an update that only removes weights (GMP) without their dense form.

An algorithm whose update keeps the largest ``|w|`` of each layer's active weights and grows nothing says
so with a :class:`dst.algorithms.base.PruneRule`. On a stored layer the selection runs over its slots:
the scores are the stored values' ``|w|``, the eligible slots those holding a weight, and each slot ranks
by the priority of its weight's flat index in the dense layer (``cols * n_out + unit``), as the dense
rule ranks it, so ties break alike and the stored run keeps the masked run's masks
(``tests/test_stored_runs.py``). A pruned weight's slot stays where it is, a zero-valued slot marked
empty (its optimizer moments are never read again): the topology, its transpose and every other slot are
unchanged, so nothing is merged, sorted or moved. A masked layer of a stored run is pruned as the
algorithm prunes it. The selections are the compiled top-k where the kernels are built (:mod:`dst.kernels`).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

from dst import kernels
from dst.algorithms.base import SparseAlgorithm
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.selection import top_k_mask
from dst.structures import UNSTRUCTURED
from dst.train import stored_update

_U32 = jnp.uint32


def unsupported(algo: SparseAlgorithm, storage) -> str | None:
    """Why ``algo`` cannot prune ``storage``'s layers in place (they then update on the dense view), or ``None``."""
    if algo.prune is None:
        return "the algorithm has its own update"
    if algo.prune.structure.name != UNSTRUCTURED.name:
        return f"structure={algo.prune.structure.name} keeps whole groups"
    if storage.backend.fixed_fan_in:
        return "its rows keep one fan-in"
    return None


def prune_in_place(algo: SparseAlgorithm, storage):
    """``act(state, key, params, slots, topologies, opt_state, ever_active, grads, taps)`` for
    :func:`dst.train.stored.update_algorithm` at a step where ``algo`` prunes by its ``prune`` rule."""
    rule = algo.prune

    def act(state, key, params, slots, topologies, opt_state, ever_active, grads, taps):
        del grads, taps
        values, valid = named_leaves(params), named_leaves(slots)
        shapes = {n: storage.layout_of[n].shape if n in storage.layout_of else tuple(v.shape)
                  for n, v in values.items()}
        names = rule.layers(state, shapes)
        sizes, scores, positions = {}, {}, {}
        for name in names:
            layout = storage.layout_of.get(name)
            scores[name] = jnp.abs(values[name]).reshape(-1)
            if layout is None:     # a masked layer of the stored run
                sizes[name] = values[name].size
                positions[name] = jnp.arange(values[name].size, dtype=_U32)
            else:
                sizes[name] = math.prod(layout.shape)
                view = storage.backend.slots(values[name], valid[name], topologies[name], layout)
                positions[name] = stored_update.dense_positions(view.cols, view.units, layout.shape[1])
        counts = rule.counts(state, sizes)
        if isinstance(counts, dict):
            keep = {n: top_k_mask(scores[n], valid[n].reshape(-1), counts[n], jax.random.fold_in(key, i),
                                  positions[n], kernels.top_k_of_keys) for i, n in enumerate(names)}
        else:   # one threshold over the layers laid end to end, each at its dense offset
            dense_at = [sum(sizes[m] for m in names[:i]) for i in range(len(names))]
            chosen = top_k_mask(jnp.concatenate([scores[n] for n in names]),
                                jnp.concatenate([valid[n].reshape(-1) for n in names]), counts, key,
                                jnp.concatenate([positions[n] + _U32(o) for n, o in zip(names, dense_at)]),
                                kernels.top_k_of_keys)
            ends = list(itertools.accumulate(scores[n].size for n in names))
            keep = dict(zip(names, jnp.split(chosen, ends[:-1])))
        keep = {n: keep[n].reshape(valid[n].shape) for n in names}
        new_values = {n: jnp.where(keep[n], values[n], 0).astype(values[n].dtype) for n in names}
        new_state = state._replace(step=state.step + 1, updated=jnp.ones((), bool))
        return (replace_named(params, new_values), replace_named(slots, keep), topologies, opt_state, ever_active,
                new_state)

    return act
