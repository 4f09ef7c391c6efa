"""Gradual magnitude pruning (Zhu & Gupta 2017): dense to sparse on a cubic schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from dst import schedules
from dst.algorithms.accounting import windowed
from dst.algorithms.base import PruneRule
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import initial_state
from dst.algorithms.base import skip_calls
from dst.algorithms.targets import check_sparsity
from dst.algorithms.targets import final_counts
from dst.masks import active_count
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.selection import global_top_k_masks
from dst.structures import UNSTRUCTURED
from dst.structures import structured_densities

SCOPES = ("layer", "global")


def pruning_due(step, update_every, start_step, end_step):
    """Pruning steps ``start_step + i * update_every`` up to ``end_step``, and ``end_step`` itself, so
    the final sparsity is always reached even when ``end_step - start_step`` is not a multiple of
    ``update_every``."""
    on_grid = (step - start_step) % update_every == 0
    return (step >= start_step) & (step <= end_step) & (on_grid | (step == end_step))


def steps_until_pruning(step, update_every, start_step, end_step, never=schedules.NEVER):
    """How many steps from ``step`` on are not :func:`pruning_due` (0 when ``step`` is); ``never`` past
    ``end_step``. The ``quiet`` hook of GMP and GraNet."""
    step = jnp.asarray(step)
    on_grid = schedules.steps_until_update(step, update_every, start_step)
    return jnp.where(step > end_step, never, jnp.minimum(on_grid, end_step - step))


def keep_largest(key, params, masks, names, counts, structure=UNSTRUCTURED):
    """New masks keeping the largest ``|w|`` among active weights: ``counts[name]`` per layer (with
    ``structure``: its ``keep``, down to a whole fan-in or whole blocks), or, when ``counts`` is one
    number, that many over all ``names`` together (a global threshold)."""
    w, m = named_leaves(params), named_leaves(masks)
    if not isinstance(counts, dict):
        return global_top_k_masks({n: jnp.abs(w[n]) for n in names}, {n: m[n] for n in names}, counts, key)
    return {n: structure.keep(jnp.abs(w[n]), m[n], counts[n], jax.random.fold_in(key, i))
            for i, n in enumerate(names)}


def gmp(*, sparsity: float, update_every: int, end_step: int, start_step: int = 0,
        initial_sparsity: float = 0.0, distribution: str = "erk", erk_power_scale: float = 1.0,
        dense_layers=(), scope: str = "layer", sparsifiable=None,
        structure=None) -> SparseAlgorithm:
    """Gradual magnitude pruning.

    At ``t = t0 + i dt <= t0 + n dt`` (``t0 = start_step``, ``n dt = end_step - start_step``) the
    sparsity target is the cubic ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3``:

    * ``scope="layer"``: each layer follows its own cubic towards its final sparsity ``s_f,l`` from
      ``distribution`` and keeps its ``round((1 - s_t,l) N_l)`` largest ``|w|``;
    * ``scope="global"``: one threshold over all sparsifiable layers keeps the
      ``round((1 - s_t) sum N_l)`` largest ``|w|``.

    Weights are only removed (a pruned weight never returns); pruned weights become exact zeros. Under a
    ``structure`` (``fan_in`` or ``block``, with ``scope="layer"``) each layer keeps its largest weights
    with the structure, its count rounded down to a whole fan-in or whole blocks.
    Training starts from masks at ``initial_sparsity`` (dense by default).

    References:
        Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning for model
        compression", arXiv:1710.01878.

    Example::

        algo = dst.algorithms.make("gmp", sparsity=0.9, update_every=100, start_step=1000, end_step=6000)
    """
    structure = structure or UNSTRUCTURED
    if structure.name == "n_m":
        raise ValueError("structure=n_m cannot be kept by GMP: its cubic schedule prunes to per-layer counts that "
                         "change at every pruning step, while N:M fixes every layer at N/M; use "
                         "structure=unstructured, fan_in or block.")
    if structure.name != "unstructured" and scope == "global":
        raise ValueError(f"scope=global cannot keep structure={structure.name} (one threshold over all layers picks "
                         "single weights); use scope=layer.")
    check_sparsity("sparsity", sparsity)
    check_sparsity("initial_sparsity", initial_sparsity)
    if not isinstance(update_every, int) or update_every <= 0:
        raise ValueError(f"update_every must be a positive integer; got {update_every!r}.")
    if not isinstance(end_step, int) or not isinstance(start_step, int) or not 0 <= start_step < end_step:
        raise ValueError(f"end_step must be an integer greater than start_step={start_step}; got {end_step!r}.")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}.")

    def init(params, masks, key=None):
        del key
        if structure.name == "unstructured":
            finals = final_counts(params, sparsity, distribution, erk_power_scale=erk_power_scale,
                                  dense_layers=dense_layers, sparsifiable=sparsifiable)
        else:   # the layers the structure divides, at densities it allows
            sizes = {n: x.size for n, x in named_leaves(params).items()}
            finals = {n: active_count(d, sizes[n]) for n, d in structured_densities(
                params, sparsity, distribution, structure, erk_power_scale=erk_power_scale,
                dense_layers=dense_layers, sparsifiable=sparsifiable).items()}
        return initial_state(masks, {n: jnp.int32(c) for n, c in finals.items()})

    def targets(step, finals, sizes):
        """The counts to keep at ``step``: per layer, or one total (scope global)."""
        if scope == "global":
            s_t = schedules.cubic_sparsity(step, initial_sparsity, sparsity, start_step, end_step)
            total = sum(sizes[n] for n in finals)
            return jnp.round((1.0 - s_t) * total).astype(jnp.int32)
        out = {}
        for n, final in finals.items():
            s_final = 1.0 - final.astype(jnp.float32) / sizes[n]
            s_t = s_final + (initial_sparsity - s_final) * (1.0 - jnp.clip(
                (step - start_step) / (end_step - start_step), 0.0, 1.0)) ** 3
            out[n] = jnp.round((1.0 - s_t) * sizes[n]).astype(jnp.int32)
        return out

    def update(state, key, params, masks, grads):
        del grads
        due = pruning_due(state.step, update_every, start_step, end_step)

        def prune(ops):
            params, masks = ops
            sizes = {n: leaf.size for n, leaf in named_leaves(params).items()}
            counts = targets(state.step.astype(jnp.float32), state.extra, sizes)
            kept = keep_largest(key, params, masks, list(state.extra), counts, structure)
            masks = replace_named(masks, kept)
            params = jax.tree_util.tree_map(lambda p, m: jnp.where(m, p, 0.0), params, masks)
            return params, masks

        params, masks = lax.cond(due, prune, lambda ops: ops, (params, masks))
        return params, masks, state._replace(step=state.step + 1, updated=due)

    def quiet(state):
        return steps_until_pruning(state.step, update_every, start_step, end_step)

    def pruning_rate(step):
        # The fraction of the active weights the cubic removes from one pruning step to the next.
        s = lambda t: float(schedules.cubic_sparsity(t, initial_sparsity, sparsity, start_step, end_step))
        return 1.0 - (1.0 - s(step)) / (1.0 - s(max(step - update_every, start_step)))

    rule = PruneRule(layers=lambda state, shapes: list(state.extra), structure=structure,
                     counts=lambda state, sizes: targets(state.step.astype(jnp.float32), state.extra, sizes))
    return SparseAlgorithm(init=init, update=update, quiet=quiet, skip=skip_calls, counts="fall", prune=rule,
                           drop_fraction_at=windowed(pruning_rate, start_step, end_step, inclusive_end=True))
