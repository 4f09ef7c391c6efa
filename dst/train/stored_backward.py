"""An algorithm that trains outside its forward mask (Top-KAST) on a storage backend.

Top-KAST (:func:`dst.algorithms.topkast`) trains a backward set ``B`` and runs the forward pass on a
smaller set ``A`` inside it, both recomputed from ``|theta|`` of every weight at its updates; the weights
outside ``B`` keep their values and may come back. On ``csr`` a stored layer's slots hold ``B`` (the
algorithm's ``backward`` set, per slot: which slots hold a weight) and its slot flags (``state.live``)
mark ``A`` among them: every step's kernels, the optimizer and its moments see ``B`` only, the forward
pass multiplies the values of ``A``. The weights outside ``B`` wait in the algorithm's state
(``outside``: each stored layer's dense ``theta`` as of the last update, stale on ``B``), untouched between
updates; at an update the slots' values are written over it to form the layer's dense ``theta``, ``B`` is its
top (the one dense selection) and is stored again, and ``A`` is ranked among ``B``'s new slots by the same scores
and priorities (:func:`dst.algorithms.topkast.nested_sets`; a structured ``A`` is ranked by ``algo.update`` on the
dense view). So the topology decisions are the masked run's.

One difference: a weight that leaves ``B`` leaves its optimizer moments behind and comes back with zero
moments, where the masked run lets them decay under zero gradients and resumes from what is left.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dst import backends
from dst import kernels
from dst import selection
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.topkast import layer_sets
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.train import stored_update


def held_masks(algo: SparseAlgorithm, params, masks):
    """What the stored layers' slots hold at the start: the masks, or the backward set of an algorithm that
    trains outside them (its count sets the layers' capacity)."""
    if algo.trainable is None:
        return masks
    return algo.trainable(algo.init(params, masks), masks)


def _outside(storage, theta) -> dict:
    """Each stored layer's dense ``theta`` as of the last update: right outside the held set, stale on it (the
    slots hold those weights' current values). Kept whole, so an update overwrites the held positions in place
    of adding two dense arrays, and stores the ranked ``theta`` as it is."""
    w = named_leaves(theta)
    return {n: w[n] for n in storage.layout_of}


def _theta(backend, layout_of, outside, params, held, topologies) -> dict:
    """Each stored layer's dense ``theta``: its slots' values written over the stale ones of ``outside``."""
    p, h = named_leaves(params), named_leaves(held)
    theta = {}
    for n, lay in layout_of.items():
        view = backend.slots(p[n], h[n], topologies[n], lay)
        theta[n] = backends.write_slots(outside[n], view.values, view.valid, view.cols, view.units)
    return replace_named(params, theta)


def init(algo: SparseAlgorithm, storage, params, masks, key):
    """``(values, slots, topologies, algo state)`` of dense ``params`` and forward ``masks`` at the start."""
    state = algo.init(params, masks, key)
    backward = state.extra["backward"]
    values, held, topologies = backends.compress(storage.backend, storage.layout_of, params, backward)
    forward = backends.at_slots(storage.backend, storage.layout_of, masks, backward)
    state = state._replace(grown=backends.at_slots(storage.backend, storage.layout_of, state.grown, backward),
                           extra={"backward": held, "outside": _outside(storage, params)})
    return values, forward, topologies, state


def ranked_in_slots(rules, storage) -> Callable:
    """Top-KAST's update (:class:`dst.algorithms.topkast.NestedRules`) with ``A`` ranked among ``B``'s new slots:
    per stored layer, ``B`` is the top of the dense ``theta`` (the one dense selection), stored; ``A`` the top of
    its slots by the same scores and priorities (:func:`dst.algorithms.topkast.nested_sets`; under a structure,
    ``A`` kept by it over the dense ``theta`` and read at ``B``'s slots, :func:`dst.algorithms.topkast.layer_sets`),
    so the masked run's sets; the moments and ``A``'s old flags move to the new slots through each new slot's old
    slot (a dense map of slot indices, read at the new slots as the values are), so no dense moment or mask is
    formed."""
    backend, layouts = storage.backend, storage.layout_of

    def act(state, key, params, slots, topologies, opt_state, ever_active, grads, taps):
        del grads, taps     # the ranking reads |theta| only
        theta = _theta(backend, layouts, state.extra["outside"], params, state.extra["backward"], topologies)
        w, p, s = named_leaves(theta), named_leaves(params), named_leaves(slots)
        held = named_leaves(state.extra["backward"])
        ever = None if ever_active is None else dict(named_leaves(ever_active))
        fwd, bwd = rules.forward_counts(theta), rules.backward_counts(theta)
        values, forward, backward, grown, sources, new_topologies = {}, {}, {}, {}, {}, dict(topologies)
        for i, n in enumerate(fwd):
            k = jax.random.fold_in(key, i)
            scores = jnp.abs(w[n])
            if n not in layouts:    # a sparse layer kept masked (a convolution): its dense sets
                with selection.selecting_with(kernels.top_k_of_keys):
                    backward[n], forward[n] = layer_sets(rules.structure, scores, bwd.get(n, 0), fwd[n], k)
                grown[n] = forward[n] & ~s[n]
                values[n] = w[n]
                if ever is not None:
                    ever[n] = ever[n] | forward[n]
                continue
            lay = layouts[n]
            old = backend.slots(p[n], held[n], topologies[n], lay)
            new = {}

            def within(b, a=None, n=n, lay=lay, k=k, new=new):   # A at B's slots
                new["b"] = b
                new["values"], new["held"], new["topology"] = backend.compress(w[n], b, lay)
                view = backend.slots(new["values"], new["held"], new["topology"], lay)
                new["view"] = view
                if a is not None:   # kept by the structure over the dense layer: read at the slots
                    return backend.compress(a, b, lay)[0] & new["held"]
                positions = stored_update.dense_positions(view.cols, view.units, lay.shape[1])
                return selection.top_k_mask(jnp.abs(view.values), view.valid, fwd[n], k, positions,
                                            kernels.top_k_of_keys)   # the same scores and priorities

            with selection.selecting_with(kernels.top_k_of_keys):
                _, forward[n] = layer_sets(rules.structure, scores, bwd.get(n, 0), fwd[n], k, within)
            # Each new slot's old slot (-1: it entered B), from a dense map of the old slots' indices.
            index = backends.write_slots(jnp.full(lay.shape, -1, jnp.int32), jnp.arange(lay.count, dtype=jnp.int32),
                                         old.valid, old.cols, old.units)
            source = jnp.where(new["held"], backend.compress(index, new["b"], lay)[0], -1)
            was_forward = jnp.where(source >= 0, s[n].reshape(-1)[jnp.maximum(source, 0)], False)
            grown[n] = forward[n] & ~was_forward.reshape(forward[n].shape)
            values[n], backward[n], new_topologies[n], sources[n] = new["values"], new["held"], new["topology"], source
            if ever is not None:
                view = new["view"]
                ever[n] = ever[n].at[view.cols, view.units].max(forward[n].reshape(-1), mode="drop")
        opt_state = stored_update.move_moments(opt_state, params, sources)
        new_state = state._replace(
            step=state.step + 1, updated=jnp.ones((), bool),
            grown=replace_named(jax.tree_util.tree_map(lambda m: jnp.zeros(m.shape, bool), slots), grown),
            extra={"backward": replace_named(state.extra["backward"], backward), "outside": {n: w[n] for n in layouts}})
        ever_active = None if ever is None else replace_named(ever_active, ever)
        return (replace_named(params, values), replace_named(slots, forward), new_topologies, opt_state, ever_active,
                new_state)

    return act
