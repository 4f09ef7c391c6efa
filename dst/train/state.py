"""The train state and the bookkeeping of topology updates (optimizer moments, ITOP, counts)."""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from dst.algorithms.base import SparseAlgorithm
from dst.masks import apply_masks
from dst.masks import named_leaves
from dst.train import one_off
from dst.train import stored
from dst.train.moments import map_param_like  # noqa: F401 (re-exported by dst.train)
from dst.train.moments import reset_moments

# fold_in tag of the algorithm's init key, so it is independent of the per-step key chain.
ALGO_INIT_STREAM = 0x616C67


class TrainState(NamedTuple):
    """A run's state. ``live`` says which entries of ``params`` hold an active weight: on a masked run
    (``topologies is None``) it is the mask pytree beside the params (also read as ``masks``); on a
    stored run a stored layer's params are its slots' values, and its ``live`` leaf says which slots
    hold a weight and which are padding (a slot flag, not a mask: ``masks`` refuses to read it, and
    :func:`dst.train.stored.dense_view` gives the dense masks)."""

    params: Any        # stored with exact zeros at inactive positions
    live: Any          # bool pytree of the params' structure: whether each entry holds an active weight (a
                       # dense kernel's mask; a stored layer's slot flags, False at padding)
    model_state: Any   # the model's non-parameter collections ({"batch_stats": ...}; {} for MLPs)
    opt_state: Any
    algo_state: Any
    ever_active: Any   # bool pytree: weights active at any step so far (ITOP rate); dense even in stored
                       # runs, where it is None when it would not fit (dst.train.stored.Storage.dense_metrics)
    active: Any        # {layer name: int32} active count per leaf at the last bookkeeping
    step: jax.Array    # int32 optimizer steps taken
    rng: jax.Array
    topologies: Any = None   # stored runs ({layer: CSR | Condensed}, dst.backends); None when masked

    @property
    def masks(self):
        """The mask pytree of a masked run (its ``live`` flags). A stored run has no dense masks in its
        state: ``live`` holds its slot flags, and :func:`dst.train.stored.dense_view` expands them."""
        if self.topologies is not None:
            raise AttributeError("a stored run's TrainState holds slot flags in .live, not masks; "
                                 "dst.train.stored.dense_view(storage, state).masks gives the dense masks.")
        return self.live


def create_train_state(key, params, masks, tx: optax.GradientTransformation, algo: SparseAlgorithm,
                       model_state=None, storage=None) -> TrainState:
    """Mask the params, initialise the optimizer and the algorithm.

    ``key`` starts the chain of per-step keys (dropout, the algorithm's updates); the algorithm's
    ``init`` gets a key folded from it (Top-KAST breaks the ties of its first backward set with it).
    With a ``storage`` (:func:`dst.train.stored.make_storage`) the state holds the stored layers'
    values, slot flags (``live``) and topologies instead of dense kernels and masks; the optimizer's moments are
    then per stored weight.
    """
    def create(key, params, masks, model_state):
        if algo.trainable is None:  # dense storage (Top-KAST) keeps the weights outside the mask
            params = apply_masks(params, masks)
        algo_key = jax.random.fold_in(key, ALGO_INIT_STREAM)
        topologies, ever_active, live = None, masks, masks
        if storage is None or not storage.stores:   # masked, or dense (nothing stored)
            algo_state = algo.init(params, masks, algo_key)
        else:
            ever_active = masks if storage.dense_metrics else None
            params, live, topologies, algo_state = stored.initial_state(algo, storage, params, masks, algo_key)
        return TrainState(params=params, live=live, model_state=model_state, opt_state=tx.init(params),
                          algo_state=algo_state, ever_active=ever_active, active=counts(live),
                          step=jnp.zeros((), jnp.int32), rng=key, topologies=topologies)

    # One compiled program: op by op, each of the dozens of small operations compiles on its own.
    return one_off.call(create, key, params, masks, {} if model_state is None else model_state)


def counts(tree):
    """``{leaf name: int32 number of True entries}``."""
    return {name: jnp.sum(leaf, dtype=jnp.int32) for name, leaf in named_leaves(tree).items()}


def settle_topology(state: TrainState):
    """Bookkeeping of the latest topology update, when ``state.algo_state.updated`` is set: zero the
    optimizer moments of grown weights, add them to ``ever_active`` and count per layer what was
    ``grown`` and ``dropped``. Returns ``(state, {"grown": ..., "dropped": ...})`` with the flag cleared.

    It runs under a ``lax.cond`` on values the step receives (the start of the next step, or the end
    of an epoch), where it costs ~1% of a step; the same cond at the end of the step, on values the
    step has just computed, costs several times more.
    """
    algo_state = state.algo_state

    def settle(ops):
        opt_state, ever_active, active = ops
        grown = counts(algo_state.grown)
        now = counts(state.live)
        dropped = {n: active[n] - now[n] + grown[n] for n in grown}
        if state.topologies is None:   # a stored run's grown weights are slots: its update keeps ever_active
            ever_active = jax.tree_util.tree_map(jnp.logical_or, ever_active, algo_state.grown)
        return (reset_moments(opt_state, state.params, algo_state.grown), ever_active, now,
                {"grown": grown, "dropped": dropped})

    def nothing(ops):
        zeros = {name: jnp.int32(0) for name in ops[2]}
        return ops + ({"grown": zeros, "dropped": zeros},)

    opt_state, ever_active, active, topology = lax.cond(
        algo_state.updated, settle, nothing, (state.opt_state, state.ever_active, state.active))
    state = state._replace(opt_state=opt_state, ever_active=ever_active, active=active,
                           algo_state=algo_state._replace(updated=jnp.zeros((), bool)))
    return state, topology


def reset_grown_moments(opt_state, params, algo_state):
    """Zero the optimizer moments of the weights grown by the algorithm's latest update, when the
    latest ``algo.update`` call changed the topology (``algo_state.updated``); a no-op otherwise."""
    return lax.cond(algo_state.updated, lambda o: reset_moments(o, params, algo_state.grown),
                    lambda o: o, opt_state)
