"""Evaluation over a whole data set in fixed-size chunks (BatchNorm on its running averages), with the
activation sparsity of the sparse layers' inputs where asked."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from dst.train.apply import ApplyFn
from dst.train.epoch import split_batch


def _split_over(sharding, size: int) -> int:
    """``size`` rounded up to a multiple of the devices ``sharding`` splits a batch over."""
    devices = 1 if sharding is None else sharding.num_devices
    return -(-size // devices) * devices


def evaluate_fn(apply_fn: ApplyFn, batch_size: int = 1000, batch_sharding=None, layers=()):
    """Jitted ``(params, model_state, x, y) -> {"loss", "accuracy"}`` over the whole set, in chunks.

    The model runs in evaluation mode (``train=False``: running averages, no dropout). A last partial
    chunk is padded and its padding excluded, so every example counts exactly once. With
    ``batch_sharding`` each chunk is split over the data-parallel devices (rounded up to a multiple of
    them) rather than evaluated whole on every device. With ``layers`` (kernel leaf names) the result also
    has ``zero_fraction/<layer>``: the fraction of exact zeros in each of those layers' inputs over the set
    (:func:`zero_fractions`).
    """

    @jax.jit
    def evaluate(params, model_state, x, y):
        n = x.shape[0]
        size = _split_over(batch_sharding, min(batch_size, n))   # a small set is one chunk, not a padded one
        chunks = -(-n // size)
        pad = chunks * size - n
        xp = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]).reshape(
            (chunks, size) + x.shape[1:])
        yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(chunks, size)
        valid = (jnp.arange(chunks * size) < n).reshape(chunks, size)

        def body(totals, batch):
            batch = split_batch(*batch, sharding=batch_sharding)
            return jax.tree_util.tree_map(jnp.add, totals, batch_totals(apply_fn, params, model_state, *batch,
                                                                        layers=layers)), None

        zeros = {name: jnp.float32(0) for name in layers}
        (loss_sum, correct, zero_rows), _ = lax.scan(body, (jnp.float32(0), jnp.int32(0), zeros), (xp, yp, valid))
        return {"loss": loss_sum / n, "accuracy": correct / n, **_zero_fractions(zero_rows, n)}

    return evaluate


def _zero_fractions(zero_rows: dict, n) -> dict:
    return {f"zero_fraction/{name}": total / n for name, total in zero_rows.items()}


def batch_totals(apply_fn: ApplyFn, params, model_state, x, y, valid, layers=()):
    """``(summed loss, number correct, {layer: summed zero fraction of its input})`` over the rows of one
    batch where ``valid`` (evaluation mode)."""
    logits, _, fractions = zero_fractions(apply_fn, layers)(params, model_state, x, False, None)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = jnp.argmax(logits, -1) == y
    zero_rows = {name: jnp.sum(jnp.where(valid, f, 0.0)) for name, f in fractions.items()}
    return jnp.sum(jnp.where(valid, losses, 0.0)), jnp.sum(jnp.where(valid, correct, False)), zero_rows


def zero_fractions(apply_fn: ApplyFn, layers):
    """``apply_fn`` that also returns, for each kernel leaf name of ``layers`` (``"Dense_1/kernel"``), the
    fraction of exact zeros in its module's input, one per example (``{layer: [batch]}``): the activation
    sparsity a sparse kernel could skip (dead ReLUs, blank pixels). The inputs are read by an outer flax
    method interceptor, so a stored model's own interceptor (:func:`dst.backends.stored_apply`) still runs."""
    modules = {name.rsplit("/", 1)[0]: name for name in layers}

    def run(params, model_state, x, train, rng):
        fractions = {}

        def capture(next_fun, args, kw, context):
            name = modules.get("/".join(context.module.path))
            if context.method_name == "__call__" and name is not None and args:
                a = args[0]
                fractions[name] = jnp.mean((a == 0).reshape(a.shape[0], -1), axis=1, dtype=jnp.float32)
            return next_fun(*args, **kw)

        if not modules:
            return (*apply_fn(params, model_state, x, train, rng), fractions)
        with nn.intercept_methods(capture):
            logits, model_state = apply_fn(params, model_state, x, train, rng)
        return logits, model_state, fractions

    return run


def stream_evaluate_fn(apply_fn: ApplyFn, batch_size: int, batch_sharding=None, layers=()):
    """``(params, model_state, batches) -> {"loss", "accuracy"}`` over host batches ``(x, y)`` of at most
    ``batch_size`` rows (data that does not fit on the device). A short last batch is padded to
    ``batch_size``, so one compiled program serves every batch; totals stay on the device until the end.
    The function's ``batch_size`` attribute says the size to cut the batches at (``batch_size`` rounded
    up to a multiple of the devices ``batch_sharding`` splits each batch over).

    Batches ``(x, y, valid)`` come padded already (rows where ``valid`` is False do not count): several
    processes each decode their own rows of every batch and pass the batch they make together. ``layers``: as
    in :func:`evaluate_fn`."""
    batch_size = _split_over(batch_sharding, batch_size)

    def batch_counts(params, state, x, y, valid):
        x, y, valid = split_batch(x, y, valid, sharding=batch_sharding)
        return (*batch_totals(apply_fn, params, state, x, y, valid, layers=layers), jnp.sum(valid, dtype=jnp.int32))

    totals = jax.jit(batch_counts)

    def evaluate(params, model_state, batches):
        loss, correct, n, seen = jnp.float32(0), jnp.int32(0), jnp.int32(0), 0
        zero_rows = {name: jnp.float32(0) for name in layers}
        for batch in batches:
            if len(batch) == 3:
                x, y, valid = batch
            else:
                x, y = batch
                rows, pad = len(y), batch_size - len(y)
                valid = np.arange(batch_size) < rows
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                y = np.concatenate([y, np.zeros((pad,), y.dtype)])
            batch_loss, batch_correct, batch_zeros, rows = totals(params, model_state, x, y, valid)
            loss, correct, n, seen = loss + batch_loss, correct + batch_correct, n + rows, seen + 1
            zero_rows = jax.tree_util.tree_map(jnp.add, zero_rows, batch_zeros)
        if seen == 0:
            raise ValueError("evaluation got no batches.")
        return {"loss": loss / n, "accuracy": correct / n, **_zero_fractions(zero_rows, n)}

    evaluate.batch_size = batch_size    # what the batches fed to it must not exceed
    return evaluate
