"""RigL: magnitude drop, gradient-magnitude growth."""

from __future__ import annotations

import jax.numpy as jnp

from dst.algorithms.accounting import periodic_dense_gradient
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import magnitude_drop
from dst.algorithms.base import prune_and_regrow


def gradient_grow_score(key, w, g):
    del key, w
    return jnp.abs(g)


def rigl(*, update_every: int, end_step: int, start_step: int = 0, drop_fraction: float = 0.3,
         drop_schedule: str = "cosine", grow_init: str = "zeros", sparsifiable=None,
         structure=None) -> SparseAlgorithm:
    """Rigging the Lottery.

    At each update, with ``n`` active weights in a layer and ``f(t) = alpha/2 (1 + cos(pi t / T_end))``:

    * drop the ``k = int(f(t) n)`` active weights of smallest ``|w|``;
    * grow the ``k`` connections, among those inactive after the drop, of largest ``|dL/dw|`` (the dense
      gradient with respect to the effective weights), initialised to zero.

    Under a ``structure`` (:mod:`dst.structures`) the growth refills each group (N:M group, output unit)
    to its count, or grows whole blocks of largest summed ``|dL/dw|``.

    References:
        Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners", ICML.

    Example::

        algo = dst.algorithms.make("rigl", update_every=100, end_step=7500, drop_fraction=0.3)
    """
    algo = prune_and_regrow(drop_rule=magnitude_drop, grow_score=gradient_grow_score,
                            update_every=update_every, end_step=end_step, start_step=start_step,
                            drop_fraction=drop_fraction, drop_schedule=drop_schedule, grow_init=grow_init,
                            sparsifiable=sparsifiable, structure=structure)
    return algo._replace(train_flops=periodic_dense_gradient(update_every, start_step, end_step))
