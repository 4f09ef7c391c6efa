"""Evaluation over a whole data set in fixed-size chunks (BatchNorm on its running averages)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from dst.train.apply import ApplyFn


def evaluate_fn(apply_fn: ApplyFn, batch_size: int = 1000):
    """Jitted ``(params, model_state, x, y) -> {"loss", "accuracy"}`` over the whole set, in chunks.

    The model runs in evaluation mode (``train=False``: running averages, no dropout). A last partial
    chunk is padded and its padding excluded, so every example counts exactly once.
    """

    @jax.jit
    def evaluate(params, model_state, x, y):
        n = x.shape[0]
        size = min(batch_size, n)      # a small set is one chunk, not a mostly-padded one
        chunks = -(-n // size)
        pad = chunks * size - n
        xp = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]).reshape(
            (chunks, size) + x.shape[1:])
        yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(chunks, size)
        valid = (jnp.arange(chunks * size) < n).reshape(chunks, size)

        def body(totals, batch):
            loss, correct = batch_totals(apply_fn, params, model_state, *batch)
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


def stream_evaluate_fn(apply_fn: ApplyFn, batch_size: int):
    """``(params, model_state, batches) -> {"loss", "accuracy"}`` over host batches ``(x, y)`` of at most
    ``batch_size`` rows (data that does not fit on the device). A short last batch is padded to
    ``batch_size``, so one compiled program serves every batch; totals stay on the device until the end.
    The function's ``batch_size`` attribute says the size to cut the batches at."""
    totals = jax.jit(lambda *args: batch_totals(apply_fn, *args))

    def evaluate(params, model_state, batches):
        loss, correct, n = jnp.float32(0), jnp.int32(0), 0
        for x, y in batches:
            rows, pad = len(y), batch_size - len(y)
            valid = np.arange(batch_size) < rows
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros((pad,), y.dtype)])
            batch_loss, batch_correct = totals(params, model_state, x, y, valid)
            loss, correct, n = loss + batch_loss, correct + batch_correct, n + rows
        if n == 0:
            raise ValueError("evaluation got no batches.")
        return {"loss": loss / n, "accuracy": correct / n}

    evaluate.batch_size = batch_size    # what the batches fed to it must not exceed
    return evaluate
