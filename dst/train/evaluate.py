"""Evaluation over a whole data set in fixed-size chunks (BatchNorm on its running averages)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
            xb, yb, vb = batch
            logits, _ = apply_fn(params, model_state, xb, False, None)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            correct = jnp.argmax(logits, -1) == yb
            return (totals[0] + jnp.sum(jnp.where(vb, losses, 0.0)),
                    totals[1] + jnp.sum(jnp.where(vb, correct, False))), None

        (loss_sum, correct), _ = lax.scan(body, (jnp.float32(0), jnp.int32(0)), (xp, yp, valid))
        return {"loss": loss_sum / n, "accuracy": correct / n}

    return evaluate
