"""Prune-and-regrow written once, over a per-layer view that every storage provides.

A :class:`LayerView` is one sparse layer as the drop and grow rules see it, whatever holds it: a dense
kernel with its mask (``masked``; :func:`dst.algorithms.base.dense_view`), or a stored layer's slots
(``csr``, ``condensed`` and born-sparse layers; :func:`dst.train.stored_update.slot_view`). The storages
differ only in where the places are and how the grown weights are found and written; :func:`prune_regrow`
is the update itself, the same for all of them. With ``n`` active weights, ``f`` the drop fraction and
``e`` the excess (MEST's decay):

* drop: the algorithm's drop rule picks ``int(f n) + e`` active weights (through the view's selection,
  which ranks by (score, keyed priority of the dense position), so every storage breaks ties alike);
* a layer whose every position is active has nowhere to explore, and is left as it is;
* grow: ``k = dropped - e`` weights outside the kept ones, by the view's grow (the rule's score over the
  dense layer, or streamed over blocks of units for stored layers);
* place: the kept weights keep their values, the grown ones take their initial value.

A new drop rule or grow score is written once, as a function of the values, gradients and mask it is
given (:data:`dst.algorithms.base.DropRule`), and runs on every storage through this function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LayerView(NamedTuple):
    """One sparse layer as prune-and-regrow reads it.

    * ``values``, ``grads``, ``live``: each place's weight, the loss gradient there, and whether it holds
      an active weight (a dense kernel's positions, or a stored layer's slots: same shapes among the three);
    * ``positions``: the layer's dense number of positions ``n_in n_out``;
    * ``drop_options``: the keyword arguments a drop rule may take (``select``, the view's bottom-k;
      ``positions``, each place's flat dense position); a rule is given those it names;
    * ``grow(key, kept, k)``: the weights grown outside ``kept`` (``k`` of them, or each group refilled
      under a structure), in the view's own form;
    * ``place(key, kept, grown)``: the layer after the update, in the view's own form.
    """

    values: jax.Array
    grads: jax.Array
    live: jax.Array
    positions: int
    drop_options: dict
    grow: Callable
    place: Callable


def call_with(rule: Callable, *args, **options):
    """``rule(*args, **options)`` with only the keyword options the rule takes."""
    names = inspect.signature(rule).parameters
    return rule(*args, **{k: v for k, v in options.items() if k in names})


def prune_regrow(drop_rule: Callable, key: jax.Array, view: LayerView, f, excess=0):
    """One layer's prune-and-regrow over ``view``: ``view.place`` of the kept weights and those grown in
    place of the dropped ones (``excess`` fewer: MEST's decay). ``f``: the drop fraction at this update.
    The key splits into the drop's, the grow's and the grown values' keys, on every storage alike."""
    k_drop, k_grow, k_init = jax.random.split(key, 3)
    excess = jnp.asarray(excess, jnp.int32)
    dropped = call_with(drop_rule, k_drop, view.values, view.grads, view.live, f, excess,
                        **view.drop_options) & view.live
    if view.live.size >= view.positions:   # room for every position: a full layer has nowhere to explore
        dropped = dropped & (jnp.sum(view.live, dtype=jnp.int32) < view.positions)
    kept = view.live & ~dropped
    k = jnp.maximum(jnp.sum(dropped, dtype=jnp.int32) - excess, 0)
    return view.place(k_init, kept, view.grow(k_grow, kept, k))
