"""The one train step: dense gradient at the effective weights, masked optimizer update, topology update.

One path for every storage: where masked, dense and stored layers differ (the gradient, the optimizer's
restriction, the topology update), the step calls its :class:`dst.train.step_path.StepPath`.

Invariant: inactive params are stored as exact zeros, so the params *are* the effective weights and the
forward pass needs no masking; the gradient the model returns is the dense gradient with respect to the
effective weights (nonzero at inactive positions too), which is what the growth rules read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from dst.algorithms.base import SparseAlgorithm
from dst.masks import apply_masks
from dst.train.apply import ApplyFn
from dst.train.state import TrainState
from dst.train.state import settle_topology
from dst.train.step_path import step_path


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def smoothed_cross_entropy(smoothing: float) -> Callable:
    """Cross-entropy against ``(1 - smoothing) * one_hot + smoothing / classes`` (Szegedy et al. 2016),
    as TF's ``losses.softmax_cross_entropy(label_smoothing=...)``; ``smoothing=0`` is :func:`cross_entropy`."""
    if smoothing == 0:
        return cross_entropy

    def loss(logits, labels):
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
        return optax.softmax_cross_entropy(logits, targets).mean()

    return loss


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The train step ``(state, (x, y)) -> (state, metrics)``, callable as ``step(state, batch)``.

    For algorithms with the ``quiet``/``skip`` hooks it also carries the *quiet path*, which
    :func:`dst.train_epoch_fn` uses to run the steps where ``algo.update`` cannot act without calling it
    (no ``lax.cond`` in the hot loop), with results identical to calling ``full`` every step.
    (A dataclass rather than a NamedTuple: ``jax.jit`` needs to hold a weak reference to it.)
    """

    full: Callable                    # calls algo.update every step
    plain: Callable | None = None     # the same step without algo.update; its state advanced by algo.skip
    quiet: Callable | None = None     # algo.quiet: how many of the next steps `plain` may take

    def __call__(self, state, batch):
        return self.full(state, batch)

    @property
    def has_quiet_path(self) -> bool:
        return self.plain is not None and self.quiet is not None


def make_train_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, algo: SparseAlgorithm,
                    loss_fn: Callable = cross_entropy, storage=None) -> TrainStep:
    """The pure train step ``(state, (x, y)) -> (state, metrics)``.

    ``apply_fn(params, model_state, x, train, rng)`` returns ``(logits, new_model_state)`` (see
    :mod:`dst.train.apply`). One step: dense gradient at the effective weights, in training mode (BatchNorm
    uses the batch's statistics and updates its running averages in ``model_state``); the optimizer sees
    it masked; params are re-masked; the algorithm updates the topology (under its own ``lax.cond``).
    The bookkeeping of an update (:func:`dst.train.settle_topology`: zeroed optimizer moments of grown
    weights, ``ever_active``, grown/dropped counts) runs at the start of the next step, before any
    optimizer update reads those moments, or at the end of the epoch.

    ``metrics`` holds the batch ``loss`` and ``accuracy``, whether this step ``updated`` the topology,
    and per layer the ``grown`` and ``dropped`` counts settled at this step (zeros at most steps).

    With a ``storage`` (:mod:`dst.train.stored`; its state from ``create_train_state(...,
    storage=storage)``) the model runs on the stored layers (``storage.apply_fn``; ``apply_fn`` is not
    used), the gradient is taken with respect to the stored values only, and the algorithm updates the
    topology through :func:`dst.train.stored.update_algorithm`.
    """
    full = _build_step(apply_fn, tx, algo, loss_fn, storage)
    if not (algo.dynamic and algo.quiet is not None and algo.skip is not None):
        return TrainStep(full=full)
    skip_one = lambda algo_state, key, params, masks, grads: (params, masks, algo.skip(algo_state, 1))
    plain = _build_step(apply_fn, tx, algo._replace(update=skip_one, dynamic=False), loss_fn, storage)
    return TrainStep(full=full, plain=plain, quiet=algo.quiet)


def _build_step(apply_fn, tx, algo, loss_fn, storage=None):
    path = step_path(apply_fn, algo, loss_fn, storage)
    # Top-KAST (the `trainable` hook) keeps its params outside the forward mask: the step applies the mask.
    dense_storage = algo.trainable is not None
    held = {"shapes": path.held_shapes} if path.held_shapes else {}

    def step(state: TrainState, batch):
        x, y = batch
        rng, k_dropout, k_algo = jax.random.split(state.rng, 3)
        if algo.dynamic:
            state, topology = settle_topology(state)
        else:
            zeros = {name: jnp.int32(0) for name in state.active}
            topology = {"grown": zeros, "dropped": zeros}
        # `grads` is the dense gradient with respect to the effective weights (on a storage backend: at the
        # stored slots, where a Top-KAST layer's slots hold its backward set and its live flags the forward set).
        weights = apply_masks(state.params, state.live) if dense_storage else state.params
        loss, logits, model_state, grads, taps = path.gradients(state, weights, x, y, k_dropout)
        train_set = algo.trainable(state.algo_state, state.live) if dense_storage else state.live
        opt_grads = grads
        if algo.penalty is not None:
            pen = jax.grad(lambda p: algo.penalty(state.algo_state, p, state.live, **held))(state.params)
            opt_grads = jax.tree_util.tree_map(jnp.add, grads, pen)
        updates, opt_state = tx.update(path.restrict(opt_grads, train_set), state.opt_state, state.params)
        params = path.apply(state.params, updates, train_set, dense_storage)
        params, live, topologies, opt_state, ever_active, algo_state, overflow = path.topology(
            state.algo_state, k_algo, params, state.live, state.topologies, grads, taps, opt_state,
            state.ever_active)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
                   "updated": algo_state.updated, **topology}
        if overflow is not None:   # weights beyond a stored layer's capacity (SNFS): the host stops the run
            metrics["overflow"] = overflow
        new_state = state._replace(params=params, live=live, model_state=model_state, opt_state=opt_state,
                                   algo_state=algo_state, ever_active=ever_active, step=state.step + 1, rng=rng,
                                   topologies=topologies)
        return new_state, metrics

    return step
