"""SRigL (Lasby et al. 2024): RigL under constant fan-in, with dynamic neuron ablation."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dst import schedules
from dst.algorithms.accounting import periodic_dense_gradient
from dst.algorithms.accounting import windowed
from dst.algorithms.base import PruneRegrowRules
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import check_schedule
from dst.algorithms.base import drop_count
from dst.algorithms.base import grow_values
from dst.algorithms.base import initial_state
from dst.algorithms.base import magnitude_drop
from dst.algorithms.base import skip_calls
from dst.algorithms.rigl import gradient_grow_score
from dst.distributions import default_sparsifiable
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.selection import bottom_k_mask
from dst.selection import grouped_top_k_mask
from dst.selection import top_k_mask
from dst.structures import fan_in
from dst.structures import matrix


class Ablation(NamedTuple):
    """SRigL's neuron ablation, for the stored update: ``gamma`` (``min_salient_fraction``), whether a
    layer may lose units (not the ``no_ablation`` ones), and the dense rule of one layer
    (``layer(key, name, w, g, mask, f, budget, ablated) -> (w, mask, grown, ablated)``) for the layers a
    stored run keeps masked."""

    gamma: float
    ablatable: Callable[[str], bool]
    layer: Callable[..., tuple]


def srigl_layer(key, w, g, mask, f, budget, gamma, ablatable=True):
    """One SRigL update of one layer; returns ``(new_w, new_mask, grown, ablated units)``.

    ``budget`` is the layer's initial active count ``B`` (its fan-in ``k_0 = B // n_out``); ``f`` the
    drop fraction. In the matrix view (one row per output unit, ``D`` inputs):

    1. drop the ``p = int(f n)`` active weights of smallest ``|w|`` over the layer (``n`` active);
    2. a unit's salient weights are those kept by 1 plus those among the ``p`` largest ``|g|`` of the
       whole layer (active or not); units with fewer than ``max(1, int(gamma k_0))`` salient weights are
       ablated, but the threshold drops to the ``(B // D + 1)``-th largest count if fewer units would
       remain (so that the budget still fits);
    3. the fan-in becomes ``k = B // (units not ablated)``; ablated units lose every weight, and the live
       units keep the ``n - p`` largest ``|w|`` among their active weights (all of them when they hold
       fewer): the authors push the ablated units' drop scores below every other and keep the ``n - p``
       largest, so weights an ablated unit held do not count against the live units' keep set;
    4. a unit that kept more than ``k`` keeps its ``k`` largest ``|w|``, and every other live unit grows
       to ``k`` by largest ``|g|`` among its weights not kept (just-dropped ones included), initialised
       to zero.
    """
    k_drop, k_sal, k_trim, k_grow = jax.random.split(key, 4)
    W, G, M = matrix(jnp.abs(w)), matrix(jnp.abs(g)), matrix(mask)     # [D, n_out]: a unit is a column
    d, n_out = M.shape
    per_unit = lambda x: jnp.sum(x, axis=0, dtype=jnp.int32)
    n_prune = drop_count(f, jnp.sum(M, dtype=jnp.int32))
    kept = M & ~bottom_k_mask(W, M, n_prune, k_drop)
    salient = per_unit(kept | top_k_mask(G, jnp.ones_like(M), n_prune, k_sal))
    k0 = budget // n_out
    threshold = jnp.maximum(1, jnp.floor(gamma * k0.astype(jnp.float32)).astype(jnp.int32))
    # Keep at least B // D + 1 units: the count of the unit at that rank caps the threshold.
    floor_count = jnp.sort(salient)[::-1][jnp.minimum(budget // d, n_out - 1)]
    threshold = jnp.minimum(threshold, floor_count)
    ablated = (salient < threshold) & ablatable & (gamma > 0)
    fan = budget // jnp.maximum(n_out - jnp.sum(ablated, dtype=jnp.int32), 1)
    live = M & ~ablated
    # The n - p largest of the live units' weights: drop the surplus smallest (none dropped without
    # ablation beyond the p of step 1, with the same keys, so then `keep` is `kept`).
    surplus = jnp.maximum(jnp.sum(live, dtype=jnp.int32) - (jnp.sum(M, dtype=jnp.int32) - n_prune), 0)
    keep = live & ~bottom_k_mask(W, live, surplus, k_drop)
    keep = grouped_top_k_mask(W, keep, fan, k_trim, 0)        # a unit above the new fan-in keeps its largest
    need = jnp.where(ablated, 0, fan - per_unit(keep))[None]
    grown = grouped_top_k_mask(G, ~keep, need, k_grow, 0)
    new_mask = (keep | grown).reshape(mask.shape)
    grown = grown.reshape(mask.shape)
    return jnp.where(new_mask & ~grown, w, 0.0), new_mask, grown, ablated


def srigl(*, update_every: int, end_step: int, start_step: int = 0, drop_fraction: float = 0.3,
          drop_schedule: str = "cosine", min_salient_fraction: float = 0.3, grow_init: str = "zeros",
          no_ablation=(), sparsifiable=None, structure=None) -> SparseAlgorithm:
    """Structured RigL: RigL at constant fan-in, with dynamic neuron ablation.

    At each update (the RigL schedule: ``f(t)`` the cosine anneal of ``drop_fraction``), every sparse
    layer of budget ``B`` (its initial active count) follows :func:`srigl_layer`: magnitude drop over
    the layer, ablation of the units with fewer than ``gamma_sal = min_salient_fraction`` of the
    initial fan-in in salient weights, the budget shared as a new constant fan-in ``B // live units``,
    and regrowth of each live unit to that fan-in by ``|dL/dw|``. Layers matching a ``no_ablation``
    regular expression (the run gives the classifier) are never ablated; ``min_salient_fraction=0``
    turns ablation off (constant fan-in RigL). Ablated units can return when their gradient makes them
    salient again. The masks must start at constant fan-in (``structure=fan_in``).

    Differences from the authors' code, on purpose: a weight dropped and regrown at the same update
    starts from zero (dst's rule for every algorithm); a unit above the new fan-in keeps its largest
    weights (theirs keeps the first by index); and when the live units hold fewer active weights than
    the keep count (the ablated units held more than the drop count), theirs fills its top-k with
    inactive zero-valued positions of the live units in index order, where dst keeps only the live
    units' active weights and regrows the rest by ``|dL/dw|``.

    References:
        Lasby et al. 2024, "Dynamic Sparse Training with Structured Sparsity", ICLR
        (calgaryml/condensed-sparsity).

    Example::

        algo = dst.algorithms.make("srigl", update_every=100, end_step=7500, min_salient_fraction=0.3)
    """
    check_schedule(update_every, start_step, end_step, drop_fraction, drop_schedule)
    if structure is not None and structure.name != "fan_in":
        raise ValueError(f"structure={structure.name} cannot be kept by SRigL: it is defined on constant fan-in; "
                         "use structure=fan_in.")
    if not isinstance(min_salient_fraction, int | float) or not 0.0 <= min_salient_fraction < 1.0:
        raise ValueError(f"min_salient_fraction must be in [0, 1); got {min_salient_fraction!r}.")
    keep_leaf = sparsifiable or default_sparsifiable
    patterns = [re.compile(p) for p in (no_ablation or ())]
    gamma = float(min_salient_fraction)
    alpha = float(drop_fraction)

    def sparse_names(tree):
        return [n for n, x in named_leaves(tree).items() if keep_leaf(n, tuple(x.shape))]

    def init(params, masks, key=None):
        del key
        m, p = named_leaves(masks), named_leaves(params)
        budget = {n: jnp.sum(m[n], dtype=jnp.int32) for n in sparse_names(params)}
        ablated = {n: jnp.zeros(p[n].shape[-1], bool) for n in budget}   # per output unit (dense shapes suffice)
        return initial_state(masks, {"budget": budget, "ablated": ablated})

    def layer_update(key, name, w, g, m, f, budget, old_ablated):
        """One layer's update, ``(w, mask, grown, ablated)``; a dense layer has nothing to explore and is left."""
        dense = jnp.sum(m, dtype=jnp.int32) == m.size
        out = srigl_layer(key, w, g, m, f, budget, gamma, not any(p.search(name) for p in patterns))
        new_w, new_m, grown, ablated = (jnp.where(dense, a, b) for a, b in
                                        zip((w, m, jnp.zeros_like(m), old_ablated), out))
        grow_key = jax.random.fold_in(key, 7)
        new_w = jnp.where(grown, grow_values(grow_key, w, new_m & ~grown, grow_init), new_w)
        return new_w, new_m, grown, ablated

    def topology(step, extra, key, params, masks, grads):
        f = schedules.drop_fraction(step, alpha, drop_schedule, end_step)
        w, m, g = named_leaves(params), named_leaves(masks), named_leaves(grads)
        new_w, new_m, grown, ablated = {}, {}, {}, {}
        for i, n in enumerate(extra["budget"]):
            new_w[n], new_m[n], grown[n], ablated[n] = layer_update(
                jax.random.fold_in(key, i), n, w[n], g[n], m[n], f, extra["budget"][n], extra["ablated"][n])
        return (replace_named(params, new_w), replace_named(masks, new_m),
                replace_named(jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, bool), masks), grown),
                {**extra, "ablated": ablated})

    def update(state, key, params, masks, grads):
        due = schedules.is_update_step(state.step, update_every, start_step, end_step)
        params, masks, grown, extra = lax.cond(
            due, lambda ops: topology(state.step, state.extra, key, *ops),
            lambda ops: (ops[0], ops[1], state.grown, state.extra), (params, masks, grads))
        return params, masks, state._replace(step=state.step + 1, grown=grown, updated=due, extra=extra)

    def quiet(state):
        return schedules.steps_until_update(state.step, update_every, start_step, end_step)

    def report(state, masks, counts=None):
        """Ablated units and the constant fan-in of each sparse layer (host values); ``counts`` (per-unit
        counts, ``dst.train.stored.UnitCounts``) in the place of a born-sparse layer's mask."""
        out, m, counts = {}, named_leaves(masks), counts or {}
        for n, abl in state.extra["ablated"].items():
            fan_in = counts[n].fan_in if n in counts else np.asarray(matrix(m[n])).sum(axis=0)
            out[f"ablated_units/{n}"] = int(np.count_nonzero(np.asarray(abl)))
            out[f"fan_in/{n}"] = int(fan_in.max())
        out["ablated_units/total"] = sum(v for k, v in out.items() if k.startswith("ablated_units/"))
        return out

    fraction = lambda t: schedules.drop_fraction(t, alpha, drop_schedule, end_step)
    # What `update` does, for stored layers (dst.train.stored_srigl): RigL's rules under constant fan-in,
    # with the ablation; a layer's key folds in its place among the sparse layers, as `topology` does.
    ablation = Ablation(gamma, lambda name: not any(p.search(name) for p in patterns), layer_update)
    rules = PruneRegrowRules(magnitude_drop, gradient_grow_score, grow_init, None, fan_in(),
                             lambda name, shape: keep_leaf(name, shape), fraction, None, keys_by="layer",
                             ablation=ablation)
    return SparseAlgorithm(init=init, update=update, quiet=quiet, skip=skip_calls, report=report, counts="keep",
                           rules=rules,
                           drop_fraction_at=windowed(fraction, start_step, end_step),
                           train_flops=periodic_dense_gradient(update_every, start_step, end_step))
