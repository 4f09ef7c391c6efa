"""How a train step reaches the weights: one :class:`StepPath` per kind of storage.

The train step (:func:`dst.make_train_step`) is one path: it asks its ``StepPath`` for the loss gradient,
restricts the optimizer's update to the weights it trains, applies it, and lets the path update the
topology. The storages differ only in these methods:

* **masked** (``sparsity.backend=masked``): the model on its dense params; the gradient with respect to
  the effective weights; the update zero outside the mask; ``algo.update`` changes the masks.
* **dense** (``sparsity.backend=dense``): a plain dense model, no mask in the step (no ``where`` on a
  kernel: the dense backend exists to time dense training).
* **stored** (``csr``, ``condensed``; :mod:`dst.train.stored`): the model on the stored values; the
  gradient with respect to them (and, for a dynamic algorithm, each stored layer's inputs and output
  gradients, which its update reads); the topology updated by :func:`dst.train.stored.update_algorithm`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from dst import backends
from dst.algorithms.base import SparseAlgorithm
from dst.backends import Stored
from dst.train import stored


class StepPath(NamedTuple):
    """What a train step does where the storages differ.

    * ``gradients(state, weights, x, y, key) -> (loss, logits, model_state, grads, taps)``: the loss gradient
      with respect to ``weights`` (the effective weights: the params, or Top-KAST's masked ones) in
      training mode; ``taps`` what the topology update reads besides (``None`` when nothing);
    * ``restrict(tree, train_set)``: ``tree`` zero outside the weights the optimizer trains;
    * ``apply(params, updates, train_set, keep_outside)``: the params after the optimizer's ``updates``,
      outside ``train_set`` kept (``keep_outside``: Top-KAST's dense storage) or zero;
    * ``topology(algo_state, key, params, masks, topologies, grads, taps, opt_state, ever_active) ->
      (params, masks, topologies, opt_state, ever_active, algo_state, overflow)``: the algorithm's update;
    * ``held_shapes``: the dense shape of each leaf the params hold as slots (a penalty's ``shapes``).
    """

    gradients: Callable
    restrict: Callable
    apply: Callable
    topology: Callable
    held_shapes: dict


def step_path(apply_fn, algo: SparseAlgorithm, loss_fn: Callable, storage=None) -> StepPath:
    """The :class:`StepPath` of ``storage``: masked (``None``), dense (a storage without a backend) or stored."""
    if storage is None:
        return masked_path(apply_fn, algo, loss_fn)
    if not storage.stores:
        return dense_path(apply_fn, algo, loss_fn)
    return stored_path(storage, algo, loss_fn)


def _model_gradients(apply_fn, loss_fn):
    def gradients(state, weights, x, y, key):
        def objective(weights):
            logits, model_state = apply_fn(weights, state.model_state, x, True, key)
            return loss_fn(logits, y), (logits, model_state)

        (loss, (logits, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(weights)
        return loss, logits, model_state, grads, None

    return gradients


def _masked(tree, train_set):
    return jax.tree_util.tree_map(lambda g, m: jnp.where(m, g, 0.0), tree, train_set)


def _apply_masked(params, updates, train_set, keep_outside):
    return jax.tree_util.tree_map(lambda p, u, m: jnp.where(m, p + u, p if keep_outside else 0.0),
                                  params, updates, train_set)


def _algorithm_topology(algo):
    def topology(algo_state, key, params, masks, topologies, grads, taps, opt_state, ever_active):
        params, masks, algo_state = algo.update(algo_state, key, params, masks, grads)
        return params, masks, topologies, opt_state, ever_active, algo_state, None

    return topology


def masked_path(apply_fn, algo: SparseAlgorithm, loss_fn: Callable) -> StepPath:
    """Dense params and masks: the gradient at the effective weights, the update masked."""
    return StepPath(_model_gradients(apply_fn, loss_fn), _masked, _apply_masked, _algorithm_topology(algo), {})


def dense_path(apply_fn, algo: SparseAlgorithm, loss_fn: Callable) -> StepPath:
    """A plain dense model: no mask in the step."""
    return StepPath(_model_gradients(apply_fn, loss_fn), lambda tree, train_set: tree,
                    lambda params, updates, train_set, keep_outside: optax.apply_updates(params, updates),
                    _algorithm_topology(algo), {})


def stored_path(storage, algo: SparseAlgorithm, loss_fn: Callable) -> StepPath:
    """The stored layers' values: their gradient from the model on the stored form, with taps for a dynamic
    algorithm, and the algorithm's update through :func:`dst.train.stored.update_algorithm`."""
    def gradients(state, weights, x, y, key):
        return _stored_gradients(storage, state._replace(params=weights), x, y, key, loss_fn, taps=algo.dynamic)

    return StepPath(gradients, _masked, _apply_masked, stored.update_algorithm(algo, storage),
                    {n: lay.shape for n, lay in storage.layout_of.items()})


def _stored_gradients(storage, state, x, y, k_dropout, loss_fn, taps: bool):
    """Loss, logits, model state and the gradient with respect to the stored values; with ``taps``
    also each stored layer's ``(inputs, output gradients)`` (through zero probes on their outputs)."""
    run = storage.apply_fn.with_taps

    def objective(values, probes):
        logits, model_state, inputs = run(Stored(values, state.topologies), state.model_state, x, True,
                                          k_dropout, probes)
        return loss_fn(logits, y), (logits, model_state, inputs)

    probes = None
    if taps:
        seen = jax.eval_shape(lambda v: objective(v, None)[1][2], state.params)
        probes = {n: jnp.zeros(backends.output_shape(lay, seen[n].shape), jnp.float32)
                  for n, lay in storage.layout_of.items()}
    argnums = (0, 1) if taps else 0
    (loss, (logits, model_state, inputs)), grads = jax.value_and_grad(objective, argnums, has_aux=True)(
        state.params, probes)
    grads, tapped = grads if taps else (grads, None)
    return loss, logits, model_state, grads, (inputs, tapped)
