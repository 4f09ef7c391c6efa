"""Your own algorithm: drop by saliency |w * g|, grow by |g|, registered as ``saliency_rigl``.

Importing this module registers the algorithm; ``train.py`` beside it imports it and then runs
``dst-train``, so ``sparsity=saliency_rigl`` (or ``sparsity.algorithm=saliency_rigl``) works there.
"""

import jax.numpy as jnp

import dst
from dst.algorithms.accounting import periodic_dense_gradient
from dst.algorithms.base import drop_count
from dst.algorithms.base import prune_and_regrow
from dst.selection import bottom_k_mask


def saliency_drop(key, w, g, mask, f, excess=0, select=bottom_k_mask):
    """Drop the ``int(f * n) + excess`` active weights of smallest ``|w * g|`` (first-order saliency).

    ``select`` is the trainer's bottom-k: whole blocks under a block structure, and on a stored layer
    (``sparsity.backend=csr``) the selection over its slots that breaks ties as the dense one would."""
    n = jnp.sum(mask, dtype=jnp.int32)
    return select(jnp.abs(w * g), mask, drop_count(f, n) + excess, key)


def gradient_grow(key, w, g):
    """Grow the inactive weights of largest ``|g|`` (RigL's rule)."""
    del key, w
    return jnp.abs(g)


def saliency_rigl(*, update_every: int, end_step: int, start_step: int = 0, drop_fraction: float = 0.3,
                  drop_schedule: str = "cosine", grow_init: str = "zeros") -> dst.algorithms.SparseAlgorithm:
    """RigL with a saliency drop: every ``update_every`` steps before ``end_step``, each sparse layer
    drops ``k = int(f(t) n)`` of its ``n`` active weights by smallest ``|w * g|`` and grows ``k`` by
    largest ``|g|``, so its count never changes."""
    algo = prune_and_regrow(drop_rule=saliency_drop, grow_score=gradient_grow, update_every=update_every,
                            end_step=end_step, start_step=start_step, drop_fraction=drop_fraction,
                            drop_schedule=drop_schedule, grow_init=grow_init)
    # What the run logs about it: a dense gradient at every update step, as RigL pays.
    return algo._replace(train_flops=periodic_dense_gradient(update_every, start_step, end_step))


dst.algorithms.register("saliency_rigl", saliency_rigl)
