"""SET: magnitude drop, random growth."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import drop_count
from dst.algorithms.base import magnitude_drop
from dst.algorithms.base import prune_and_regrow
from dst.selection import bottom_k_mask
from dst.selection import priorities_at
from dst.selection import random_ranks
from dst.selection import top_k_mask


def sign_split_drop(key, w, g, mask, f, excess=0, positions=None):
    """Mocanu's rule: drop the fraction ``f`` closest to zero among the positive and, separately, among
    the negative active weights (``int(f * n_pos)`` smallest positive, ``int(f * n_neg)`` largest
    negative). Active weights that are exactly zero count with the positive ones. ``positions``: the
    weights' flat indices in the layer when ``w`` holds only some of them (stored weights)."""
    del g, excess  # SET keeps its density: no decay
    k_pos, k_neg = jax.random.split(key)
    pos = mask & (w >= 0)
    neg = mask & (w < 0)
    drop_pos = bottom_k_mask(w, pos, drop_count(f, jnp.sum(pos, dtype=jnp.int32)), k_pos, positions)
    drop_neg = top_k_mask(w, neg, drop_count(f, jnp.sum(neg, dtype=jnp.int32)), k_neg, positions)
    return drop_pos | drop_neg


def random_grow_score(key, w, g, positions=None):
    """Unique random ranks: growth uniformly at random among the inactive weights. ``positions``: the
    flat indices of the scored weights in their layer when ``w`` is only part of it (a block of rows),
    so each weight gets the rank it has in the whole layer."""
    del g
    return random_ranks(key, w.shape) if positions is None else priorities_at(key, positions)


def set_(*, update_every: int, end_step: int, start_step: int = 0, drop_fraction: float = 0.3,
         drop_schedule: str = "constant", sign_split: bool = False, grow_init: str = "zeros",
         grow_std: float | None = None, sparsifiable=None, structure=None) -> SparseAlgorithm:
    """Sparse Evolutionary Training.

    At each update, with ``n`` active weights in a layer and drop fraction ``f(t)``:

    * drop the ``k = int(f(t) n)`` active weights of smallest ``|w|`` (``sign_split=True``: Mocanu's
      rule, :func:`sign_split_drop`);
    * grow ``k`` weights chosen uniformly at random among the inactive ones, with values ``grow_init``
      (``normal`` with ``grow_std=0.1``: the reference code's N(0, 1) / 10).

    References:
        Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive sparse
        connectivity inspired by network science", Nature Communications 9.

    Example::

        algo = dst.algorithms.make("set", update_every=100, end_step=10_000, drop_fraction=0.3)
    """
    return prune_and_regrow(drop_rule=sign_split_drop if sign_split else magnitude_drop,
                            grow_score=random_grow_score, update_every=update_every, end_step=end_step,
                            start_step=start_step, drop_fraction=drop_fraction, drop_schedule=drop_schedule,
                            grow_init=grow_init, grow_std=grow_std, sparsifiable=sparsifiable,
                            structure=structure)
