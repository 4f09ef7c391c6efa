"""One-shot pruning from data before training (the ``prune_at_init`` hook of SNIP and GraSP)."""

from __future__ import annotations

from collections.abc import Callable

import jax

from dst.algorithms.base import SparseAlgorithm
from dst.train.apply import ApplyFn
from dst.train.epoch import epoch_batches
from dst.train.step import cross_entropy


def prune_at_init(algo: SparseAlgorithm, key, params, masks, apply_fn: ApplyFn, x, y, batch_size: int,
                  loss_fn: Callable = None, model_state=None):
    """Run the algorithm's one-shot pruning hook (SNIP, GraSP) on ``algo.init_batches`` shuffled
    batches of ``(x, y)``; the masks come back unchanged for every other algorithm.

    The loss is the training loss in training mode (BatchNorm on the batch's statistics, dropout from
    ``key``), as the first training step would see it; ``model_state`` is not updated.
    """
    if algo.prune_at_init is None:
        return masks
    loss_fn = loss_fn or cross_entropy
    model_state = {} if model_state is None else model_state
    k_order, k_prune, k_dropout = jax.random.split(key, 3)
    order = epoch_batches(k_order, x.shape[0], batch_size)[: algo.init_batches]
    batches = [(x[idx], y[idx]) for idx in order]
    objective = lambda p, batch: loss_fn(apply_fn(p, model_state, batch[0], True, k_dropout)[0], batch[1])
    return jax.jit(algo.prune_at_init, static_argnums=3)(k_prune, params, masks, objective, batches)
