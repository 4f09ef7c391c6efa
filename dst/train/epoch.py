"""On-device epochs: one jitted call runs a shuffled epoch (a ``lax.scan`` of the step, or runs of quiet
steps between the steps where the algorithm may act), with optional on-device augmentation."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from dst.train.state import settle_topology
from dst.train.step import TrainStep

# fold_in tag of the augmentation keys, so that they are independent of the data order's key.
AUGMENT_STREAM = 0x617567

Augment = Callable  # (key, images) -> images, per batch, on the device


def epoch_batches(key, num_examples: int, batch_size: int) -> jax.Array:
    """A fresh permutation cut into ``(num_batches, batch_size)`` index rows (the remainder is dropped)."""
    num_batches = num_examples // batch_size
    if num_batches == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the {num_examples} training examples.")
    return jax.random.permutation(key, num_examples)[: num_batches * batch_size].reshape(num_batches, -1)


LOOPS = ("scan", "host")


def train_epoch_fn(step: TrainStep | Callable, batch_size: int, augment: Augment | None = None,
                   max_steps: int | None = None, loop: str = "scan", batch_sharding=None, progress=None):
    """A jitted ``(state, x, y, key) -> (state, metrics)`` running one shuffled epoch on the device.

    ``x`` and ``y`` stay on the device; each step gathers its batch by index (``key`` orders the
    epoch), so an epoch is one dispatch. ``augment(key, images)``, when given, transforms each batch
    on the device with a key folded from ``key`` and the step's index in the epoch. ``max_steps``
    caps the steps of the epoch (smoke runs). Metrics come back stacked per step.

    The epoch is a ``lax.scan`` of ``step``; when ``step`` is a :class:`TrainStep` with a quiet path
    (see :func:`dst.make_train_step`), it runs plain steps between the steps where the algorithm may
    act instead, with identical results. ``loop="host"`` runs the same epoch as one jitted dispatch
    per step instead (:class:`HostLoopEpoch`: conv nets on CPU). ``progress(done, steps, loss)``, when
    given, is called on the host after each step (from inside the compiled epoch by ``jax.debug.callback``).
    """
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}; got {loop!r}.")
    if loop == "host":
        return HostLoopEpoch(step, batch_size, augment, max_steps, batch_sharding, progress)
    return jax.jit(epoch_body(step, batch_size, augment, max_steps, batch_sharding, progress))


def epoch_body(step: TrainStep | Callable, batch_size: int, augment: Augment | None = None,
               max_steps: int | None = None, batch_sharding=None, progress=None):
    """The unjitted epoch ``(state, x, y, key, index=None) -> (state, metrics)`` of
    :func:`train_epoch_fn`. With ``index`` (int array), the epoch's examples are ``x[index]``,
    ``y[index]``: replicas that share one copy of the data each train on their own subset and order
    (see :mod:`dst.train.replicas`). ``batch_sharding`` (a ``jax.sharding.Sharding``) splits each
    batch over devices (data parallel: see :mod:`dst.train.devices`)."""
    def epoch(state, x, y, key, index=None):
        n = x.shape[0] if index is None else index.shape[0]
        order = epoch_batches(key, n, batch_size)
        if max_steps is not None:
            order = order[:max_steps]
        if index is not None:
            order = index[order]
        k_augment = jax.random.fold_in(key, AUGMENT_STREAM)

        def batch(i):
            images, labels = split_batch(x[order[i]], y[order[i]], sharding=batch_sharding)
            if augment is not None:
                images = augment(jax.random.fold_in(k_augment, i), images)
            return images, labels

        return run_steps(step, state, batch, order.shape[0], progress)

    return epoch


def run_steps(step: TrainStep | Callable, state, batch, n: int, progress=None):
    """``n`` steps on ``batch(i)`` (traced): a ``lax.scan`` of the step, or the quiet path's segments when
    the step has one; then the bookkeeping of an update made by the last step is settled, so that the
    counts and ITOP of these steps are complete. Metrics come back stacked per step. ``progress(done, n,
    loss)`` is called on the host after each step."""
    told = _telling(progress, n)
    if isinstance(step, TrainStep) and step.has_quiet_path:
        state, metrics = _segmented_epoch(step, state, batch, n, told)
    else:
        state, metrics = lax.scan(lambda s, i: told(i, step(s, batch(i))), state, jnp.arange(n))
    return settle_last(state, metrics)


def _telling(progress, n: int):
    """``told(i, (state, metrics)) -> (state, metrics)`` that calls ``progress(i + 1, n, loss)`` on the host
    (a no-op without ``progress``: the program is then the same as without it)."""
    if progress is None:
        return lambda i, out: out

    def told(i, out):
        jax.debug.callback(lambda done, loss: progress(int(done), n, float(loss)), i + 1, out[1]["loss"])
        return out

    return told


def split_batch(*arrays, sharding=None):
    """``arrays`` (a batch's images, labels, ...) constrained to ``sharding`` (split along their first
    axis over the data-parallel devices), or as they are without one."""
    return arrays if sharding is None else lax.with_sharding_constraint(arrays, sharding)


def host_loop(step, settle, state, calls, progress=None):
    """``step(state, *args)`` for each ``args`` of ``calls``, one dispatch each, then ``settle`` (a jitted
    :func:`settle_last`) on the metrics stacked per step, as a compiled run of the steps returns them.
    ``progress(rows)``, when given, is called with the metrics of the steps so far after each step."""
    rows = []
    for args in calls:
        state, metrics = step(state, *args)
        rows.append(metrics)
        if progress is not None:
            progress(rows)
    return settle(state, jax.tree_util.tree_map(lambda *r: jnp.stack(r), *rows))


def settle_last(state, metrics):
    """Settle an update made by the last step run, adding its counts to the last row of ``metrics``."""
    state, topology = settle_topology(state)
    for kind in ("grown", "dropped"):
        metrics[kind] = {n: c.at[-1].add(topology[kind][n]) for n, c in metrics[kind].items()}
    return state, metrics


class HostLoopEpoch:
    """The epoch of :func:`train_epoch_fn` as a host loop over one jitted step per dispatch.

    XLA on CPU runs convolutions inside a loop body tens of times slower than outside one (measured:
    6 steps of WRN-22-2 at batch 32 took 47 s in a ``lax.scan`` and 1.0 s unrolled; jax issue #12868),
    so on CPU a conv net trains faster with one dispatch per step; a step costs far more than the
    dispatch. Same signature and results as the scanned epoch (the full step every step, the
    topology bookkeeping of an update made by the epoch's last step settled at its end).
    """

    def __init__(self, step, batch_size: int, augment: Augment | None = None, max_steps: int | None = None,
                 batch_sharding=None, progress: Callable | None = None):
        self.batch_size, self.max_steps, self.progress = batch_size, max_steps, progress
        full = step.full if isinstance(step, TrainStep) else step

        def one_step(state, x, y, idx, key, i):
            images, labels = split_batch(x[idx], y[idx], sharding=batch_sharding)
            if augment is not None:
                images = augment(jax.random.fold_in(key, i), images)
            return full(state, (images, labels))

        self.step = jax.jit(one_step)
        self.order = jax.jit(epoch_batches, static_argnums=(1, 2))
        self.settle = jax.jit(settle_last)

    def lower(self, state, x, y, key):
        """Compile the step for these shapes (the trainer times it); returns an object whose
        ``compile()`` gives the epoch function, as ``jax.jit(...).lower(...)`` does."""
        idx = jnp.zeros((self.batch_size,), jnp.int32)
        self.step = self.step.lower(state, x, y, idx, key, jnp.int32(0)).compile()
        return self

    def compile(self):
        return self

    def __call__(self, state, x, y, key):
        order = self.order(key, x.shape[0], self.batch_size)
        n = order.shape[0] if self.max_steps is None else min(order.shape[0], self.max_steps)
        k_augment = jax.random.fold_in(key, AUGMENT_STREAM)
        calls = ((x, y, order[i], k_augment, jnp.int32(i)) for i in range(n))
        progress = None if self.progress is None else \
            lambda rows: self.progress(len(rows), n, float(rows[-1]["loss"]))
        return host_loop(self.step, self.settle, state, calls, progress)


def _record(metrics, i, values):
    """Add one step's metrics at row ``i`` (rows start at zero; only settled counts share a row)."""
    def put(buf, v):
        if buf.dtype == jnp.bool_:
            return buf.at[i].set(buf[i] | v)
        return buf.at[i].add(v.astype(buf.dtype))
    return jax.tree_util.tree_map(put, metrics, values)


def _segmented_epoch(step: TrainStep, state, batch, n, told=lambda i, out: out):
    """The epoch of ``lax.scan(step)``, with the quiet steps run by ``step.plain`` in a loop free of
    ``lax.cond``: a segment is the quiet steps before the next step where ``algo.update`` may act,
    then that one full step and the bookkeeping the next step would do (:func:`settle_topology`),
    recorded on the row the scan records it on."""
    shapes = jax.eval_shape(step.full, state, batch(0))[1]
    metrics = jax.tree_util.tree_map(lambda s: jnp.zeros((n,) + s.shape, s.dtype), shapes)

    def plain_step(i, carry):
        state, metrics = carry
        state, values = told(i, step.plain(state, batch(i)))
        return state, _record(metrics, i, values)

    def full_step(i, state, metrics):
        state, values = told(i, step.full(state, batch(i)))
        metrics = _record(metrics, i, values)
        state, topology = settle_topology(state)
        counts = _record({kind: metrics[kind] for kind in topology}, jnp.minimum(i + 1, n - 1), topology)
        return state, {**metrics, **counts}

    def next_update(carry):
        i, state, _ = carry
        return i + jnp.minimum(step.quiet(state.algo_state), n) < n

    def segment(carry):
        i, state, metrics = carry
        j = i + step.quiet(state.algo_state)
        state, metrics = lax.fori_loop(i, j, plain_step, (state, metrics))
        state, metrics = full_step(j, state, metrics)
        return j + 1, state, metrics

    # No cond around the full step: on CPU a cond over the whole state costs a copy of it.
    i, state, metrics = lax.while_loop(next_update, segment, (jnp.int32(0), state, metrics))
    state, metrics = lax.fori_loop(i, n, plain_step, (state, metrics))
    return state, metrics
