"""GraNet (Liu et al. 2021): gradual global magnitude pruning combined with gradient regrowth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from dst import schedules
from dst.algorithms.accounting import periodic_dense_gradient
from dst.algorithms.accounting import windowed
from dst.algorithms.base import PruneRegrowRules
from dst.algorithms.base import PruneRule
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import check_schedule
from dst.algorithms.base import initial_state
from dst.algorithms.base import magnitude_drop
from dst.algorithms.base import no_growth
from dst.algorithms.base import prune_regrow_layer
from dst.algorithms.base import skip_calls
from dst.algorithms.base import unstructured_only
from dst.algorithms.gmp import keep_largest
from dst.algorithms.gmp import pruning_due
from dst.algorithms.gmp import steps_until_pruning
from dst.algorithms.rigl import gradient_grow_score
from dst.algorithms.targets import check_sparsity
from dst.distributions import default_sparsifiable
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.structures import UNSTRUCTURED


def granet(*, sparsity: float, update_every: int, end_step: int, start_step: int = 0,
           initial_sparsity: float = 0.5, drop_fraction: float = 0.5, drop_schedule: str = "cosine",
           grow_init: str = "zeros", sparsifiable=None, structure=None) -> SparseAlgorithm:
    """Gradual pruning with zero-cost neuroregeneration.

    At each update ``t = t0 + i dt <= end_step``:

    1. gradual pruning: keep the ``round((1 - s_t) sum N_l)`` largest ``|w|`` over all sparsifiable
       layers (one global threshold), with ``s_t`` Zhu & Gupta's cubic from ``initial_sparsity`` to
       ``sparsity`` over ``[start_step, end_step]``;
    2. regeneration, per layer with ``n`` active weights: drop the ``k = int(f(t) n)`` smallest
       ``|w|`` and grow the ``k`` inactive weights of largest ``|dL/dw|``, initialised to zero, with
       ``f(t)`` the ``drop_schedule`` anneal of ``drop_fraction``.

    Training starts from masks at ``initial_sparsity``.

    References:
        Liu et al. 2021, "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration",
        NeurIPS.

    Example::

        algo = dst.algorithms.make("granet", sparsity=0.9, initial_sparsity=0.5, update_every=100,
                                   end_step=5000)
    """
    unstructured_only(structure, "GraNet", "its gradual pruning keeps one global count of single weights that "
                      "changes at every update, which N:M groups, whole fan-ins and whole blocks cannot follow")
    check_sparsity("sparsity", sparsity)
    check_sparsity("initial_sparsity", initial_sparsity)
    check_schedule(update_every, start_step, end_step, drop_fraction, drop_schedule)
    keep_leaf = sparsifiable or default_sparsifiable
    alpha = float(drop_fraction)

    def init(params, masks, key=None):
        del params, key
        return initial_state(masks)

    def update(state, key, params, masks, grads):
        due = pruning_due(state.step, update_every, start_step, end_step)
        names = [n for n, x in named_leaves(params).items() if keep_leaf(n, tuple(x.shape))]

        def topology(ops):
            params, masks, grads = ops
            k_prune, k_regrow = jax.random.split(key)
            t = state.step.astype(jnp.float32)
            s_t = schedules.cubic_sparsity(t, initial_sparsity, sparsity, start_step, end_step)
            total = sum(named_leaves(params)[n].size for n in names)
            kept = keep_largest(k_prune, params, masks, names, jnp.round((1.0 - s_t) * total).astype(jnp.int32))
            masks = replace_named(masks, kept)
            params = jax.tree_util.tree_map(lambda p, m: jnp.where(m, p, 0.0), params, masks)
            f = schedules.drop_fraction(state.step, alpha, drop_schedule, end_step)
            w, m, g = named_leaves(params), named_leaves(masks), named_leaves(grads)
            new_w, new_m, new_g = {}, {}, {}
            for i, n in enumerate(names):
                new_w[n], new_m[n], new_g[n] = prune_regrow_layer(
                    jax.random.fold_in(k_regrow, i), w[n], g[n], m[n], f, jnp.int32(0), magnitude_drop,
                    gradient_grow_score, grow_init)
            grown = replace_named(no_growth(masks), new_g)
            return replace_named(params, new_w), replace_named(masks, new_m), grown

        params, masks, grown = lax.cond(due, topology, lambda ops: (ops[0], ops[1], state.grown),
                                        (params, masks, grads))
        return params, masks, state._replace(step=state.step + 1, grown=grown, updated=due)

    def quiet(state):
        return steps_until_pruning(state.step, update_every, start_step, end_step)

    # What `update` does, for stored layers: the global pruning in place, then the regeneration from storage
    # (dst.train.stored.update_path), with the same keys: k_prune, and k_regrow folded by layer.
    def global_count(state, sizes):
        s_t = schedules.cubic_sparsity(state.step.astype(jnp.float32), initial_sparsity, sparsity, start_step,
                                       end_step)
        return jnp.round((1.0 - s_t) * sum(sizes.values())).astype(jnp.int32)

    prune = PruneRule(layers=lambda state, shapes: [n for n, s in shapes.items() if keep_leaf(n, s)],
                      counts=global_count, structure=UNSTRUCTURED)
    fraction = lambda t: schedules.drop_fraction(t, alpha, drop_schedule, end_step)
    regrow_layer = lambda key, w, g, mask, f, more=0: prune_regrow_layer(
        key, w, g, mask, f, jnp.int32(more), magnitude_drop, gradient_grow_score, grow_init)
    rules = PruneRegrowRules(magnitude_drop, gradient_grow_score, grow_init, None, UNSTRUCTURED,
                             lambda name, shape: keep_leaf(name, shape), fraction, regrow_layer, keys_by="layer")

    # Counts only fall: the global pruning keeps a subset of each layer, the regeneration regrows in each
    # layer as many weights as it dropped there.
    return SparseAlgorithm(
        init=init, update=update, quiet=quiet, skip=skip_calls, counts="fall", prune=prune, rules=rules,
        drop_fraction_at=windowed(lambda t: schedules.drop_fraction(t, alpha, drop_schedule, end_step),
                                  start_step, end_step, inclusive_end=True),
        train_flops=periodic_dense_gradient(update_every, start_step, end_step + 1))
