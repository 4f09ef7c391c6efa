"""SNFS (sparse momentum) on a storage backend: its momentum every step, its updates from storage.

SNFS (:func:`dst.algorithms.snfs`) keeps the momentum of every weight's dense gradient, active or not, and at
its updates moves weights between layers by it (:class:`dst.algorithms.snfs.MomentumRules`). On ``csr`` each
step forms a stored layer's dense weight gradient from the step's own forward and backward pass, ``output
gradient^T @ inputs`` (``[n_out, n_in]``: by output unit, as the slots lie), and folds it into the momentum,
kept in that layout (:func:`by_unit`; a dense array per layer: what the rule reads); the stored values, slots
and topology are not expanded. At an update each stored layer drops among its stored values, the budget is
shared by the algorithm's own :func:`allocate` from per-layer statistics of the slots (mean ``|m|`` over the
active weights, room), and each layer grows its share at the largest ``|m|`` outside what it kept
(:func:`dst.train.stored_update.grow_candidates`, the score read from the momentum in blocks of units), merged
into its slots in CSR order. Every selection ranks by (score, keyed priority of the dense position), as the
dense rule does, so the decisions are the masked run's (``tests/test_stored_runs.py``). A layer whose share
exceeds its capacity reports it (``overflow``) and the run stops. Layers that stay masked in a stored run
update as the dense rule does.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from dst import kernels
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import grow_scale
from dst.algorithms.base import grow_values
from dst.algorithms.base import magnitude_drop
from dst.algorithms.snfs import allocate
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.selection import bottom_k_mask
from dst.train import stored_update


def by_unit(storage, algo_state):
    """``algo_state`` with each stored layer's momentum laid out by output unit, ``[n_out, n_in]`` (the
    transpose of the dense kernel's): the layout this path keeps, in which a unit's momentum is one row, so
    the grow score of a block of units and the statistics at the slots (CSR order) read it front to back."""
    momentum = named_leaves(algo_state.extra["momentum"])
    by_unit = {n: momentum[n].T for n in storage.layout_of}
    return algo_state._replace(extra={**algo_state.extra,
                                      "momentum": replace_named(algo_state.extra["momentum"], by_unit)})


def unsupported(algo: SparseAlgorithm) -> str | None:
    """Why SNFS's stored layers cannot update from storage (they then update on the dense view), or None."""
    rules = algo.momentum_rules
    if rules is None:
        return "the algorithm has its own update"
    if rules.structure.name != "unstructured":
        return f"structure={rules.structure.name} drops and grows whole blocks"
    return None


def update(algo: SparseAlgorithm, storage, block: int = stored_update.GROW_BLOCK) -> Callable:
    """``act(state, key, params, slots, topologies, opt_state, ever_active, grads, taps) -> (params, slots,
    topologies, opt_state, ever_active, state, overflow)`` at every step: the momentum, and at the
    algorithm's update steps the new topology (:mod:`dst.train.stored_momentum`)."""
    rules = algo.momentum_rules
    backend, layouts = storage.backend, storage.layout_of
    beta = rules.momentum

    def act(state, key, params, slots, topologies, opt_state, ever_active, grads, taps):
        dense_grads = stored_update.dense_gradients(storage, grads, taps, by_unit=True)
        momentum = jax.tree_util.tree_map(lambda m, g: beta * m + (1.0 - beta) * g, state.extra["momentum"],
                                          dense_grads)
        due = rules.due(state.step)
        ops = (params, slots, topologies, opt_state, ever_active)
        no_overflow = {n: jnp.int32(0) for n in layouts}
        params, slots, topologies, opt_state, ever_active, grown, overflow = lax.cond(
            due, lambda ops: _topology(rules, backend, layouts, block, state.step, key, momentum, *ops),
            lambda ops: (*ops, state.grown, no_overflow), ops)
        state = state._replace(step=state.step + 1, grown=grown, updated=due, extra={"momentum": momentum})
        return params, slots, topologies, opt_state, ever_active, state, overflow

    return act


def _topology(rules, backend, layouts, block, step, key, momentum, params, slots, topologies, opt_state,
              ever_active):
    """One SNFS update of every layer it takes: stored layers from their slots, the others dense."""
    w, m, mo = named_leaves(params), named_leaves(slots), named_leaves(momentum)
    shape_of = lambda n: layouts[n].shape if n in layouts else tuple(w[n].shape)
    names = [n for n in w if rules.updates(n, shape_of(n))]
    p = rules.fraction(step)
    views, kept, dropped, share, room = {}, {}, [], [], []
    for i, n in enumerate(names):
        size = shape_of(n)[0] * shape_of(n)[1] if n in layouts else w[n].size
        if n in layouts:
            view = views[n] = backend.slots(w[n], m[n], topologies[n], layouts[n])
            valid, values = view.valid, view.values
            positions = stored_update.dense_positions(view.cols, view.units, layouts[n].shape[1])
            select = lambda s, e, k, kk, positions=positions: bottom_k_mask(s, e, k, kk, positions,
                                                                            kernels.top_k_of_keys)
            magnitude = jnp.abs(mo[n])[view.units, view.cols]     # by unit: read front to back
        else:
            valid, values, select, magnitude = m[n], w[n], rules.structure.drop, jnp.abs(mo[n])
        active = jnp.sum(valid, dtype=jnp.int32)
        can_move = active < size            # dense layers stay out of the exchange
        d = magnitude_drop(jax.random.fold_in(key, i), values, None, valid, p, select=select) & valid & can_move
        kept[n] = valid & ~d
        dropped.append(jnp.sum(d, dtype=jnp.int32))
        mean = jnp.sum(jnp.where(valid, magnitude, 0.0)) / jnp.maximum(active, 1)
        share.append(jnp.where(can_move, mean, 0.0))
        room.append(jnp.where(can_move, size - jnp.sum(kept[n], dtype=jnp.int32), 0))
    k_alloc, k_grow = jax.random.split(jax.random.fold_in(key, len(names)))
    budget = allocate(sum(dropped), jnp.stack(share), jnp.stack(room), k_alloc)

    new_w, new_m, grown, sources, overflow = {}, {}, {}, {}, {n: jnp.int32(0) for n in layouts}
    topologies, ever = dict(topologies), None if ever_active is None else named_leaves(ever_active)
    ever_out, done = {}, None
    for i, n in enumerate(names):
        kg, ki = jax.random.split(jax.random.fold_in(k_grow, i))
        if n not in layouts:
            grown[n] = rules.structure.refill(jnp.abs(mo[n]), m[n], kept[n], budget[i], kg)
            new_m[n] = kept[n] | grown[n]
            new_w[n] = jnp.where(grown[n], grow_values(ki, w[n], kept[n], rules.grow_init),
                                 jnp.where(new_m[n], w[n], 0.0))
            if ever is not None:
                ever_out[n] = ever[n] | new_m[n]
            continue
        view, layout = views[n], layouts[n]
        if done is not None:   # one layer at a time: this layer starts after the last one ended
            done, view = lax.optimization_barrier((done, view))
        n_in, n_out = layout.shape
        capacity = view.values.shape[0]
        kept_count = jnp.sum(kept[n], dtype=jnp.int32)
        overflow[n] = jnp.maximum(kept_count + budget[i] - capacity, 0)
        scores_of = lambda start, width, mom=mo[n]: jnp.abs(lax.dynamic_slice_in_dim(mom, start, width, axis=0))
        g_inputs, g_units, g_chosen = stored_update.grow_candidates(
            rules, kg, view.valid, kept[n], view.cols, view.units, None, None, budget[i], layout.shape, capacity,
            block, scores_of=scores_of)
        g_chosen = g_chosen & (jnp.arange(capacity) < capacity - kept_count)   # past capacity: overflow stops the run
        values, live, cols, units, sources[n], fresh, rowptr = stored_update.merge_kept_and_grown(
            view.values.astype(w[n].dtype), view.cols, view.units, kept[n], g_inputs, g_units, g_chosen, layout.shape)
        if rules.grow_init != "zeros":   # the dense rule's values: its scale times the dense draw at each position
            values = stored_update.with_normal_growth(values, fresh, grow_scale(view.values, kept[n]), ki, cols, units,
                                                     layout.shape)
        values, live, topologies[n] = backend.rebuild(values, live, cols, rowptr, layout)
        new_w[n], new_m[n] = values, live
        grown[n] = fresh.reshape(live.shape)
        done = (values, live)
        if ever is not None:
            ever_out[n] = ever[n].at[cols, units].max(live.reshape(-1), mode="drop")

    opt_state = stored_update.move_moments(opt_state, params, sources)
    grown_tree = replace_named(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, bool), slots), grown)
    return (replace_named(params, new_w), replace_named(slots, new_m), topologies, opt_state,
            None if ever is None else replace_named(ever_active, ever_out), grown_tree, overflow)
