"""An algorithm that trains outside its forward mask (Top-KAST) on a storage backend.

Top-KAST (:func:`dst.algorithms.topkast`) trains a backward set ``B`` and runs the forward pass on a
smaller set ``A`` inside it, both recomputed from ``|theta|`` of every weight at its updates; the weights
outside ``B`` keep their values and may come back. On ``csr`` a stored layer's slots hold ``B`` (the
algorithm's ``backward`` set, per slot: which slots hold a weight) and its slot flags (``state.masks``)
mark ``A`` among them: every step's kernels, the optimizer and its moments see ``B`` only, the forward
pass multiplies the values of ``A``. The weights outside ``B`` wait in the algorithm's state
(``outside``: each stored layer's dense ``theta`` as of the last update, stale on ``B``), untouched between
updates; at an update the slots' values are written over it to form the layer's dense ``theta``, the
algorithm's own ``update`` ranks it, and ``B`` is stored again. So the topology decisions are the masked run's.

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
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.train.moments import map_param_trees


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


def update(algo: SparseAlgorithm, storage) -> Callable:
    """``act(state, key, params, slots, topologies, opt_state, ever_active, grads, taps) -> (params, slots,
    topologies, opt_state, ever_active, state)`` at an update step: ``algo.update`` on the layers' dense
    ``theta`` (stored ``B`` and the weights outside it), ``B`` stored again, the moments moved with their
    weights, ``A`` flagged among the new slots."""
    backend, layouts = storage.backend, storage.layout_of
    expand = lambda tree, held, topologies: backends.expand(backend, layouts, tree, held, topologies)

    def act(state, key, params, slots, topologies, opt_state, ever_active, grads, taps):
        del grads, taps     # the ranking reads |theta| only
        held = state.extra["backward"]
        theta = _theta(backend, layouts, state.extra["outside"], params, held, topologies)
        backward = expand(params, held, topologies)[1]
        forward = expand(params, slots, topologies)[1]
        inner = state._replace(grown=jax.tree_util.tree_map(lambda m: jnp.zeros(m.shape, bool), forward),
                               extra={"backward": backward})
        with selection.selecting_with(kernels.top_k_of_keys):   # the same sets, ranked in one compiled pass
            theta, forward, new = algo.update(inner, key, theta, forward, None)
        backward = new.extra["backward"]
        values, new_held, new_topologies = backends.compress(backend, layouts, theta, backward)
        # Every other dense array is read at the new slots as the values were: front to back, one pass each.
        read = lambda tree: backends.compress(backend, layouts, tree, backward)[0]
        flags_at = lambda tree: backends.at_slots(backend, layouts, tree, backward)
        opt_state = map_param_trees(lambda m: read(expand(m, held, topologies)[0]), opt_state, params)
        if ever_active is not None:
            ever_active = jax.tree_util.tree_map(jnp.logical_or, ever_active, forward)
        new = new._replace(grown=flags_at(new.grown),
                           extra={"backward": new_held, "outside": _outside(storage, theta)})
        return values, flags_at(forward), new_topologies, opt_state, ever_active, new

    return act
