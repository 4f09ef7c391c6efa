"""Evaluation over a whole data set in fixed-size chunks (BatchNorm on its running averages)."""

from __future__ import annotations

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


def evaluate_fn(apply_fn: ApplyFn, batch_size: int = 1000, batch_sharding=None):
    """Jitted ``(params, model_state, x, y) -> {"loss", "accuracy"}`` over the whole set, in chunks.

    The model runs in evaluation mode (``train=False``: running averages, no dropout). A last partial
    chunk is padded and its padding excluded, so every example counts exactly once. With
    ``batch_sharding`` each chunk is split over the data-parallel devices (rounded up to a multiple of
    them) rather than evaluated whole on every device.
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
            loss, correct = batch_totals(apply_fn, params, model_state, *split_batch(*batch, sharding=batch_sharding))
            return (totals[0] + loss, totals[1] + correct), None

        (loss_sum, correct), _ = lax.scan(body, (jnp.float32(0), jnp.int32(0)), (xp, yp, valid))
        return {"loss": loss_sum / n, "accuracy": correct / n}

    return evaluate


def batch_totals(apply_fn: ApplyFn, params, model_state, x, y, valid):
    """``(summed loss, number correct)`` over the rows of one batch where ``valid`` (evaluation mode)."""
    logits, _ = apply_fn(params, model_state, x, False, None)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = jnp.argmax(logits, -1) == y
    return jnp.sum(jnp.where(valid, losses, 0.0)), jnp.sum(jnp.where(valid, correct, False))


def stream_evaluate_fn(apply_fn: ApplyFn, batch_size: int, batch_sharding=None):
    """``(params, model_state, batches) -> {"loss", "accuracy"}`` over host batches ``(x, y)`` of at most
    ``batch_size`` rows (data that does not fit on the device). A short last batch is padded to
    ``batch_size``, so one compiled program serves every batch; totals stay on the device until the end.
    The function's ``batch_size`` attribute says the size to cut the batches at (``batch_size`` rounded
    up to a multiple of the devices ``batch_sharding`` splits each batch over).

    Batches ``(x, y, valid)`` come padded already (rows where ``valid`` is False do not count): several
    processes each decode their own rows of every batch and pass the batch they make together."""
    batch_size = _split_over(batch_sharding, batch_size)

    def batch_counts(params, state, x, y, valid):
        x, y, valid = split_batch(x, y, valid, sharding=batch_sharding)
        return (*batch_totals(apply_fn, params, state, x, y, valid), jnp.sum(valid, dtype=jnp.int32))

    totals = jax.jit(batch_counts)

    def evaluate(params, model_state, batches):
        loss, correct, n, seen = jnp.float32(0), jnp.int32(0), jnp.int32(0), 0
        for batch in batches:
            if len(batch) == 3:
                x, y, valid = batch
            else:
                x, y = batch
                rows, pad = len(y), batch_size - len(y)
                valid = np.arange(batch_size) < rows
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                y = np.concatenate([y, np.zeros((pad,), y.dtype)])
            batch_loss, batch_correct, rows = totals(params, model_state, x, y, valid)
            loss, correct, n, seen = loss + batch_loss, correct + batch_correct, n + rows, seen + 1
        if seen == 0:
            raise ValueError("evaluation got no batches.")
        return {"loss": loss / n, "accuracy": correct / n}

    evaluate.batch_size = batch_size    # what the batches fed to it must not exceed
    return evaluate
