"""The train state, the one jitted train step, on-device epochs and evaluation.

Invariant: inactive params are stored as exact zeros, so the params *are* the effective weights and the
forward pass needs no masking; the gradient the model returns is the dense gradient with respect to the
effective weights (nonzero at inactive positions too), which is what the growth rules read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from dst.algorithms.base import SparseAlgorithm
from dst.masks import apply_masks
from dst.masks import named_leaves


class TrainState(NamedTuple):
    params: Any        # stored with exact zeros at inactive positions
    masks: Any         # bool pytree of the params' structure
    opt_state: Any
    algo_state: Any
    ever_active: Any   # bool pytree: weights active at any step so far (ITOP rate)
    active: Any        # {layer name: int32} active count per leaf at the last bookkeeping
    step: jax.Array    # int32 optimizer steps taken
    rng: jax.Array


def create_train_state(key, params, masks, tx: optax.GradientTransformation,
                       algo: SparseAlgorithm) -> TrainState:
    """Mask the params, initialise the optimizer and the algorithm."""
    if algo.trainable is None:  # dense storage (Top-KAST) keeps the weights outside the mask
        params = apply_masks(params, masks)
    return TrainState(params=params, masks=masks, opt_state=tx.init(params),
                      algo_state=algo.init(params, masks), ever_active=masks, active=_counts(masks),
                      step=jnp.zeros((), jnp.int32), rng=key)


def prune_at_init(algo: SparseAlgorithm, key, params, masks, apply_fn: Callable, x, y, batch_size: int,
                  loss_fn: Callable = None):
    """Run the algorithm's one-shot pruning hook (SNIP, GraSP) on ``algo.init_batches`` shuffled
    batches of ``(x, y)``; the masks come back unchanged for every other algorithm."""
    if algo.prune_at_init is None:
        return masks
    loss_fn = loss_fn or cross_entropy
    k_order, k_prune = jax.random.split(key)
    order = epoch_batches(k_order, x.shape[0], batch_size)[: algo.init_batches]
    batches = [(x[idx], y[idx]) for idx in order]
    objective = lambda p, batch: loss_fn(apply_fn(p, batch[0], False, None), batch[1])
    return jax.jit(algo.prune_at_init, static_argnums=3)(k_prune, params, masks, objective, batches)


def _counts(tree):
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
        grown = _counts(algo_state.grown)
        now = _counts(state.masks)
        dropped = {n: active[n] - now[n] + grown[n] for n in grown}
        return (reset_moments(opt_state, state.params, algo_state.grown),
                jax.tree_util.tree_map(jnp.logical_or, ever_active, algo_state.grown), now,
                {"grown": grown, "dropped": dropped})

    def nothing(ops):
        zeros = {name: jnp.int32(0) for name in ops[2]}
        return ops + ({"grown": zeros, "dropped": zeros},)

    opt_state, ever_active, active, counts = lax.cond(
        algo_state.updated, settle, nothing, (state.opt_state, state.ever_active, state.active))
    state = state._replace(opt_state=opt_state, ever_active=ever_active, active=active,
                           algo_state=algo_state._replace(updated=jnp.zeros((), bool)))
    return state, counts


def map_param_like(fn: Callable, opt_state, params, *rest):
    """Apply ``fn(leaf, *rest_leaves)`` to every subtree of ``opt_state`` shaped like ``params``.

    This reaches the per-weight moments of any optax optimizer (SGD's trace, Adam's mu and nu, states
    nested in ``chain``, ``inject_hyperparams`` or ``masked``) without knowing its state classes.
    """
    params_def = jax.tree_util.tree_structure(params)
    leaf_shapes = [x.shape for x in jax.tree_util.tree_leaves(params)]

    def param_like(node):
        if jax.tree_util.tree_structure(node) != params_def:
            return False
        return [getattr(x, "shape", None) for x in jax.tree_util.tree_leaves(node)] == leaf_shapes

    def visit(node):
        if param_like(node):
            return jax.tree_util.tree_map(fn, node, *rest)
        return node

    return jax.tree_util.tree_map(visit, opt_state, is_leaf=param_like)


def reset_moments(opt_state, params, reset):
    """Zero every optimizer moment at the positions where ``reset`` (bool pytree) is True."""
    return map_param_like(lambda m, r: jnp.where(r, jnp.zeros_like(m), m), opt_state, params, reset)


def reset_grown_moments(opt_state, params, algo_state):
    """Zero the optimizer moments of the weights grown by the algorithm's latest update, when the
    latest ``algo.update`` call changed the topology (``algo_state.updated``); a no-op otherwise."""
    return lax.cond(algo_state.updated, lambda o: reset_moments(o, params, algo_state.grown),
                    lambda o: o, opt_state)


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation, algo: SparseAlgorithm,
                    loss_fn: Callable = cross_entropy):
    """The pure train step ``(state, (x, y)) -> (state, metrics)``.

    ``apply_fn(params, x, train, rng)`` returns logits. One step: dense gradient at the effective
    weights; the optimizer sees it masked; params are re-masked; the algorithm updates the topology
    (under its own ``lax.cond``). The bookkeeping of an update (:func:`settle_topology`: zeroed
    optimizer moments of grown weights, ``ever_active``, grown/dropped counts) runs at the start of
    the next step, before any optimizer update reads those moments, or at the end of the epoch.

    ``metrics`` holds the batch ``loss`` and ``accuracy``, whether this step ``updated`` the topology,
    and per layer the ``grown`` and ``dropped`` counts settled at this step (zeros at most steps).

    For algorithms with the ``quiet``/``skip`` hooks the returned step also carries ``quiet_path``,
    which :func:`train_epoch_fn` uses to run the steps where ``update`` cannot act without it.
    """
    step = _build_step(apply_fn, tx, algo, loss_fn)
    if algo.dynamic and algo.quiet is not None and algo.skip is not None:
        skip_one = lambda algo_state, key, params, masks, grads: (params, masks, algo.skip(algo_state, 1))
        plain = _build_step(apply_fn, tx, algo._replace(update=skip_one, dynamic=False), loss_fn)
        step.quiet_path = QuietPath(plain=plain, quiet=algo.quiet)
    return step


class QuietPath(NamedTuple):
    plain: Callable   # the train step without ``algo.update`` (its state advanced by ``algo.skip``)
    quiet: Callable   # algo.quiet: how many of the next steps ``plain`` may take


def _build_step(apply_fn, tx, algo, loss_fn):
    def step(state: TrainState, batch):
        x, y = batch
        rng, k_dropout, k_algo = jax.random.split(state.rng, 3)
        if algo.dynamic:
            state, topology = settle_topology(state)
        else:
            zeros = {name: jnp.int32(0) for name in state.active}
            topology = {"grown": zeros, "dropped": zeros}

        def objective(weights):
            logits = apply_fn(weights, x, True, k_dropout)
            return loss_fn(logits, y), logits

        # Stored params are the effective weights (exact zeros outside the mask), except with dense
        # storage, where the mask is applied here. Either way `grads` is the dense gradient with
        # respect to the effective weights.
        dense_storage = algo.trainable is not None
        weights = apply_masks(state.params, state.masks) if dense_storage else state.params
        (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(weights)
        train_set = algo.trainable(state.algo_state, state.masks) if dense_storage else state.masks
        opt_grads = grads
        if algo.penalty is not None:
            pen = jax.grad(lambda p: algo.penalty(state.algo_state, p, state.masks))(state.params)
            opt_grads = jax.tree_util.tree_map(jnp.add, grads, pen)
        masked = jax.tree_util.tree_map(lambda g, m: jnp.where(m, g, 0.0), opt_grads, train_set)
        updates, opt_state = tx.update(masked, state.opt_state, state.params)
        params = jax.tree_util.tree_map(lambda p, u, m: jnp.where(m, p + u, p if dense_storage else 0.0),
                                        state.params, updates, train_set)
        params, masks, algo_state = algo.update(state.algo_state, k_algo, params, state.masks, grads)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
                   "updated": algo_state.updated, **topology}
        new_state = state._replace(params=params, masks=masks, opt_state=opt_state, algo_state=algo_state,
                                   step=state.step + 1, rng=rng)
        return new_state, metrics

    return step


def epoch_batches(key, num_examples: int, batch_size: int) -> jax.Array:
    """A fresh permutation cut into ``(num_batches, batch_size)`` index rows (the remainder is dropped)."""
    num_batches = num_examples // batch_size
    if num_batches == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the {num_examples} training examples.")
    return jax.random.permutation(key, num_examples)[: num_batches * batch_size].reshape(num_batches, -1)


def train_epoch_fn(step: Callable, batch_size: int):
    """A jitted ``(state, x, y, key) -> (state, metrics)`` running one shuffled epoch on the device.

    ``x`` and ``y`` stay on the device; each step gathers its batch by index, so an epoch is one
    dispatch. Metrics come back stacked per step. The epoch is a ``lax.scan`` of ``step``, or, when
    ``step`` has a ``quiet_path`` (see :func:`make_train_step`), runs of plain steps between the
    steps where the algorithm may act, with identical results.
    """
    quiet_path = getattr(step, "quiet_path", None)

    @jax.jit
    def epoch(state, x, y, key):
        order = epoch_batches(key, x.shape[0], batch_size)

        def body(state, idx):
            return step(state, (x[idx], y[idx]))

        if quiet_path is None:
            state, metrics = lax.scan(body, state, order)
        else:
            state, metrics = _segmented_epoch(step, quiet_path, state, x, y, order)
        # Settle an update made by the epoch's last step, so the epoch's counts and ITOP are complete.
        state, topology = settle_topology(state)
        for kind in ("grown", "dropped"):
            metrics[kind] = {n: c.at[-1].add(topology[kind][n]) for n, c in metrics[kind].items()}
        return state, metrics

    return epoch


def _record(metrics, i, values):
    """Add one step's metrics at row ``i`` (rows start at zero; only settled counts share a row)."""
    def put(buf, v):
        if buf.dtype == jnp.bool_:
            return buf.at[i].set(buf[i] | v)
        return buf.at[i].add(v.astype(buf.dtype))
    return jax.tree_util.tree_map(put, metrics, values)


def _segmented_epoch(step, path: QuietPath, state, x, y, order):
    """The epoch of ``lax.scan(step)``, with the quiet steps run by ``path.plain`` in a loop free of
    ``lax.cond``: a segment is the quiet steps before the next step where ``algo.update`` may act,
    then that one full step and the bookkeeping the next step would do (:func:`settle_topology`),
    recorded on the row the scan records it on."""
    n = order.shape[0]
    batch = lambda i: (x[order[i]], y[order[i]])
    shapes = jax.eval_shape(step, state, batch(0))[1]
    metrics = jax.tree_util.tree_map(lambda s: jnp.zeros((n,) + s.shape, s.dtype), shapes)

    def plain_step(i, carry):
        state, metrics = carry
        state, values = path.plain(state, batch(i))
        return state, _record(metrics, i, values)

    def full_step(i, state, metrics):
        state, values = step(state, batch(i))
        metrics = _record(metrics, i, values)
        state, topology = settle_topology(state)
        counts = _record({kind: metrics[kind] for kind in topology}, jnp.minimum(i + 1, n - 1), topology)
        return state, {**metrics, **counts}

    def next_update(carry):
        i, state, _ = carry
        return i + jnp.minimum(path.quiet(state.algo_state), n) < n

    def segment(carry):
        i, state, metrics = carry
        j = i + path.quiet(state.algo_state)
        state, metrics = lax.fori_loop(i, j, plain_step, (state, metrics))
        state, metrics = full_step(j, state, metrics)
        return j + 1, state, metrics

    # No cond around the full step: on CPU a cond over the whole state costs a copy of it.
    i, state, metrics = lax.while_loop(next_update, segment, (jnp.int32(0), state, metrics))
    state, metrics = lax.fori_loop(i, n, plain_step, (state, metrics))
    return state, metrics


def evaluate_fn(apply_fn: Callable, batch_size: int = 1000):
    """Jitted ``(params, x, y) -> {"loss", "accuracy"}`` over the whole set, in fixed-size chunks.

    A last partial chunk is padded and its padding excluded, so every example counts exactly once.
    """

    @jax.jit
    def evaluate(params, x, y):
        n = x.shape[0]
        chunks = -(-n // batch_size)
        pad = chunks * batch_size - n
        xp = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]).reshape(
            (chunks, batch_size) + x.shape[1:])
        yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(chunks, batch_size)
        valid = (jnp.arange(chunks * batch_size) < n).reshape(chunks, batch_size)

        def body(totals, batch):
            xb, yb, vb = batch
            logits = apply_fn(params, xb, False, None)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            correct = jnp.argmax(logits, -1) == yb
            return (totals[0] + jnp.sum(jnp.where(vb, losses, 0.0)),
                    totals[1] + jnp.sum(jnp.where(vb, correct, False))), None

        (loss_sum, correct), _ = lax.scan(body, (jnp.float32(0), jnp.int32(0)), (xp, yp, valid))
        return {"loss": loss_sum / n, "accuracy": correct / n}

    return evaluate


def flax_apply(model) -> Callable:
    """Adapt a flax.linen model to ``apply_fn(params, x, train, rng)``."""

    def apply_fn(params, x, train, rng):
        rngs = {"dropout": rng} if (train and rng is not None) else None
        return model.apply({"params": params}, x, train=train, rngs=rngs)

    return apply_fn
