"""MEST (Yuan et al. 2021): drop by |w| + lambda |g|, grow at random, optional sparsity decay."""

from __future__ import annotations

import jax.numpy as jnp

from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import drop_count
from dst.algorithms.base import prune_and_regrow
from dst.algorithms.set import random_grow_score
from dst.algorithms.targets import check_sparsity
from dst.algorithms.targets import final_counts
from dst.algorithms.targets import mask_counts
from dst.selection import bottom_k_mask


def mest(*, update_every: int, end_step: int, start_step: int = 0, drop_fraction: float = 0.3,
         drop_schedule: str = "constant", grad_weight: float = 1.0, grow_init: str = "zeros",
         sparsity: float | None = None, initial_sparsity: float | None = None,
         decay_end_step: int | None = None, distribution: str = "erk", erk_power_scale: float = 1.0,
         dense_layers=(), sparsifiable=None, structure=None) -> SparseAlgorithm:
    """Memory-Economic Sparse Training.

    At each update, per layer with ``n`` active weights: drop the ``k = int(f(t) n)`` active weights
    of smallest ``|w| + lambda |dL/dw|`` (``lambda = grad_weight``) and grow ``k`` inactive weights
    uniformly at random.

    Sparsity decay (MEST+EM&S): with ``initial_sparsity`` below ``sparsity``, training starts at
    ``initial_sparsity`` and a layer's target count moves linearly from its initial count ``n_0`` to
    its final count ``n_f`` (``distribution`` at ``sparsity``) between ``start_step`` and
    ``decay_end_step`` (default: the last update before ``end_step``); each update also drops
    ``max(n - target, 0)`` more weights by the same score, which are not regrown.

    References:
        Yuan et al. 2021, "MEST: Accurate and Fast Memory-Economic Sparse Training Framework on the
        Edge", NeurIPS.

    Example::

        algo = dst.algorithms.make("mest", update_every=100, end_step=5000, grad_weight=1.0)
    """
    check_sparsity("initial_sparsity", initial_sparsity, allow_none=True)
    decaying = initial_sparsity is not None
    if decaying:
        check_sparsity("sparsity", sparsity)
        if initial_sparsity > sparsity:
            raise ValueError(f"initial_sparsity must be at most sparsity={sparsity}; got {initial_sparsity}.")
    # By default the decay ends at the last update before end_step, so the final count is reached.
    last_update = end_step - 1 - (end_step - 1 - start_step) % update_every if isinstance(end_step, int) \
        and isinstance(update_every, int) and update_every > 0 and end_step > start_step else end_step
    decay_end = max(last_update, start_step + 1) if decay_end_step is None else decay_end_step
    if decaying and (not isinstance(decay_end, int) or decay_end <= start_step):
        raise ValueError(f"decay_end_step must be an integer greater than start_step={start_step}; got "
                         f"{decay_end_step!r}.")
    lam = float(grad_weight)

    def drop(key, w, g, mask, f, excess=0, select=bottom_k_mask):
        n = jnp.sum(mask, dtype=jnp.int32)
        return select(jnp.abs(w) + lam * jnp.abs(g), mask, drop_count(f, n) + excess, key)

    def init_extra(params, masks):
        finals = final_counts(params, sparsity, distribution, erk_power_scale=erk_power_scale,
                              dense_layers=dense_layers, sparsifiable=sparsifiable)
        return {"initial": mask_counts(masks, finals), "final": {n: jnp.int32(c) for n, c in finals.items()}}

    def excess(step, extra, name, n):
        progress = jnp.clip((step - start_step) / (decay_end - start_step), 0.0, 1.0)
        n0, nf = extra["initial"][name], extra["final"][name]
        target = jnp.round(n0 + (nf - n0) * progress).astype(jnp.int32)
        return jnp.maximum(n - target, 0)

    return prune_and_regrow(drop_rule=drop, grow_score=random_grow_score, update_every=update_every,
                            end_step=end_step, start_step=start_step, drop_fraction=drop_fraction,
                            drop_schedule=drop_schedule, grow_init=grow_init, sparsifiable=sparsifiable,
                            init_extra=init_extra if decaying else None, excess=excess if decaying else None,
                            structure=structure)
