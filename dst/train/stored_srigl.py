"""SRigL's update on stored layers, from storage (:func:`dst.algorithms.srigl.srigl_layer`, decision for decision).

Each step of the dense rule, over a layer's slot view (:meth:`dst.backends.Backend.slots`) and the blocks
of its dense gradient (:func:`dst.train.stored_update.grow_candidates`), with every selection ranked by
(score, keyed priority of the weight's dense position) as the dense rule ranks it:

1. drop the ``int(f n)`` stored weights of smallest ``|w|``;
2. each unit's salient count: its kept weights, plus the positions among the ``int(f n)`` largest ``|g|``
   of the whole layer (streamed in blocks) that are not kept;
3. the ablated units, the new fan-in ``budget // live units`` (a few numbers per unit);
4. the live units keep the ``n - p`` largest of their weights, then each unit its ``fan`` largest (a sort
   of the layer's slots by unit, then score);
5. each live unit grows to ``fan`` by largest ``|g|`` outside what it keeps (streamed in blocks), merged
   with the kept weights into the same capacity.

The dense temporaries are blocks of the gradient, as for RigL.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp

from dst import kernels
from dst.algorithms.base import drop_count
from dst.algorithms.base import grow_scale
from dst.algorithms.rigl import gradient_grow_score
from dst.selection import bottom_k_mask
from dst.selection import priorities_at
from dst.selection import score_keys
from dst.structures import UNSTRUCTURED
from dst.structures import fan_in
from dst.train import stored_update

_U32 = jnp.uint32
_BY_GRADIENT = types.SimpleNamespace(grow_score=gradient_grow_score, structure=UNSTRUCTURED)
_BY_GRADIENT_PER_UNIT = types.SimpleNamespace(grow_score=gradient_grow_score, structure=fan_in())


def _top_k_per_unit(scores, eligible, k, key, positions, units, n_out):
    """Each unit's ``k`` eligible slots of largest (score, priority), as ``grouped_top_k_mask`` along a
    unit picks them, by one sort of the slots."""
    keys = jnp.where(eligible, score_keys(scores), _U32(0))
    unit = jnp.where(eligible, units, n_out)
    order = jnp.lexsort((~priorities_at(key, positions), ~keys, unit))   # by unit, then larger first
    sorted_units = unit[order]
    rank = jnp.arange(unit.size) - jnp.searchsorted(sorted_units, sorted_units, side="left")
    return jnp.zeros(unit.shape, bool).at[order].set((sorted_units < n_out) & (rank < k))


def _member(queries, sorted_keys):
    at = jnp.clip(jnp.searchsorted(sorted_keys, queries), 0, sorted_keys.size - 1)
    return sorted_keys[at] == queries


def srigl_slots(key, f, view, x, dy, shape, budget, gamma, ablatable, block):
    """One stored layer's SRigL update: ``(values, live, cols, units, source, grown, rowptr, ablated)`` of
    the new slots in CSR order (as :func:`dst.train.stored_update.update_slots` returns them) and the
    ablated units."""
    n_in, n_out = shape
    capacity = view.values.shape[0]
    k_drop, k_sal, k_trim, k_grow = jax.random.split(key, 4)
    units = jnp.clip(view.units, 0, n_out - 1)
    positions = stored_update.dense_positions(view.cols, units, n_out)
    w = jnp.abs(view.values)
    smallest = lambda eligible, k: bottom_k_mask(w, eligible, k, k_drop, positions, kernels.top_k_of_keys)
    per_unit = lambda m: jax.ops.segment_sum(m.astype(jnp.int32), units, n_out)
    n = jnp.sum(view.valid, dtype=jnp.int32)
    n_prune = drop_count(f, n)
    kept = view.valid & ~smallest(view.valid, n_prune)
    # Salient: kept, or among the n_prune largest |g| of the layer (counted once).
    g_inputs, g_units, g_chosen = stored_update.grow_candidates(
        _BY_GRADIENT, k_sal, view.valid, jnp.zeros_like(kept), view.cols, units, x, dy, n_prune, shape, capacity,
        block)
    g_positions = stored_update.dense_positions(g_inputs, g_units, n_out)
    kept_positions = jnp.sort(jnp.where(kept, positions, _U32(0xFFFFFFFF)))
    fresh = g_chosen & ~_member(g_positions, kept_positions)
    salient = per_unit(kept) + jax.ops.segment_sum(fresh.astype(jnp.int32), jnp.clip(g_units, 0, n_out - 1), n_out)
    k0 = budget // n_out
    threshold = jnp.maximum(1, jnp.floor(gamma * k0.astype(jnp.float32)).astype(jnp.int32))
    threshold = jnp.minimum(threshold, jnp.sort(salient)[::-1][jnp.minimum(budget // n_in, n_out - 1)])
    ablated = (salient < threshold) & ablatable & (gamma > 0)
    fan = budget // jnp.maximum(n_out - jnp.sum(ablated, dtype=jnp.int32), 1)
    live = view.valid & ~ablated[units]
    surplus = jnp.maximum(jnp.sum(live, dtype=jnp.int32) - (n - n_prune), 0)
    keep = live & ~smallest(live, surplus)
    # Only a unit above the new fan-in (fewer units ablated than before) is trimmed: sort only then.
    keep = jax.lax.cond(jnp.any(per_unit(keep) > fan),
                        lambda: _top_k_per_unit(w, keep, fan, k_trim, positions, units, n_out), lambda: keep)
    need = jnp.where(ablated, 0, fan - per_unit(keep))
    grown_inputs, grown_units, grown = stored_update.grow_candidates(
        _BY_GRADIENT_PER_UNIT, k_grow, view.valid, keep, view.cols, units, x, dy, None, shape, capacity, block,
        need=need)
    merged = stored_update.merge_kept_and_grown(view.values, view.cols, units, keep, grown_inputs, grown_units,
                                                grown, shape)
    return (*merged, ablated)


def update_stored(algo, storage, block: int = stored_update.GROW_BLOCK):
    """``act`` of :func:`dst.train.stored_update.update_stored` for SRigL (``algo.rules.ablation``): stored
    layers by :func:`srigl_slots`, masked ones by the dense rule; the ablated units kept in the state."""
    rules, ablation = algo.rules, algo.rules.ablation

    def act(state, key, params, slots, topologies, opt_state, ever_active, grads, taps):
        f = rules.fraction(state.step)
        budget, old_ablated = state.extra["budget"], state.extra["ablated"]
        ablated = dict(old_ablated)

        def stored_layer(name, layer_key, operands, layout):
            values, valid, topology, value_grads, x, dy = operands
            del value_grads
            n_in, n_out = layout.shape
            view = storage.backend.slots(values, valid, topology, layout)
            dense = jnp.sum(view.valid, dtype=jnp.int32) == n_in * n_out   # nothing to explore: as it is
            out = srigl_slots(layer_key, f, view, x, dy, layout.shape, budget[name], ablation.gamma,
                              ablation.ablatable(name), block)
            new_values, live, cols, units, source, grown, rowptr, new_ablated = out
            same = (view.values, view.valid, view.cols, view.units,
                    jnp.where(view.valid, jnp.arange(view.valid.size), -1), jnp.zeros_like(view.valid),
                    topology_rowptr(view, n_out), old_ablated[name])
            new_values, live, cols, units, source, grown, rowptr, ablated[name] = (
                jnp.where(dense, a, b) for a, b in zip(same, out))
            if rules.grow_init != "zeros":   # the dense rule's values: the kept RMS times the dense draw at each slot
                new_values = stored_update.with_normal_growth(new_values, grown, grow_scale(new_values, live & ~grown),
                                                              jax.random.fold_in(layer_key, 7), cols, units,
                                                              layout.shape)
            grown = storage.backend.rebuild(grown, live, cols, rowptr, layout)[0]    # laid out as the values are
            new_values, live, new_topology = storage.backend.rebuild(new_values, live, cols, rowptr, layout)
            return stored_update.LayerUpdate(new_values, live, new_topology, source, grown, units, cols)

        def dense_layer(name, layer_key, w, g, m):
            w, m, grown, ablated[name] = ablation.layer(layer_key, name, w, g, m, f, budget[name], old_ablated[name])
            return w, m, grown

        *out, grown = stored_update.update_layers(
            storage, rules, key, params, slots, topologies, opt_state, ever_active, grads, taps,
            stored_layer=stored_layer, dense_layer=dense_layer)
        extra = {**state.extra, "ablated": ablated}
        return (*out, state._replace(step=state.step + 1, grown=grown, updated=jnp.ones((), bool), extra=extra))

    return act


def topology_rowptr(view, n_out):
    """Each unit's first slot, from a slot view in CSR order (padding on the last unit)."""
    starts = jnp.searchsorted(view.units, jnp.arange(n_out + 1, dtype=jnp.int32), side="left").astype(jnp.int32)
    return starts.at[-1].set(view.units.size)
