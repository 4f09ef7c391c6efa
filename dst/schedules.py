"""Schedules: when masks update, how much they drop, and gradual-pruning sparsity curves.

All functions take a step that may be a Python int or a traced integer, so they work inside ``jit``.
"""

from __future__ import annotations

import jax.numpy as jnp

DROP_SCHEDULES = ("constant", "cosine", "linear")


def is_update_step(step, update_every: int, start_step: int = 0, end_step: int | None = None):
    """True at ``start_step, start_step + update_every, ...`` strictly before ``end_step``."""
    step = jnp.asarray(step)
    due = (step >= start_step) & ((step - start_step) % update_every == 0)
    if end_step is not None:
        due = due & (step < end_step)
    return due


NEVER = 2**30  # steps until an update when none is left: more steps than any run takes


def steps_until_update(step, update_every: int, start_step: int = 0, end_step: int | None = None,
                       never: int = NEVER):
    """How many steps from ``step`` on are not update steps (0 when ``step`` is one); ``never`` when
    no update step is left before ``end_step``."""
    step = jnp.asarray(step)
    phase = (step - start_step) % update_every
    wait = jnp.where(step < start_step, start_step - step, jnp.where(phase == 0, 0, update_every - phase))
    if end_step is None:
        return wait
    return jnp.where(step + wait >= end_step, never, wait)


def drop_fraction(step, alpha: float, schedule: str = "cosine", end_step: int | None = None):
    """Fraction of a layer's active weights dropped at ``step``.

    * ``constant``: ``alpha``
    * ``cosine``: ``alpha / 2 * (1 + cos(pi * t / end_step))`` (RigL)
    * ``linear``: ``alpha * (1 - t / end_step)``

    ``t`` is clipped to ``[0, end_step]``. Returned as float32.
    """
    if schedule not in DROP_SCHEDULES:
        raise ValueError(f"drop_schedule must be one of {', '.join(DROP_SCHEDULES)}; got {schedule!r}.")
    if schedule == "constant":
        return jnp.float32(alpha)
    if end_step is None or end_step <= 0:
        raise ValueError(f"drop_schedule={schedule!r} needs end_step > 0; got {end_step}.")
    t = jnp.clip(jnp.asarray(step, jnp.float32), 0.0, float(end_step)) / float(end_step)
    if schedule == "cosine":
        # cos(pi t) written as sin(pi (1/2 - t)), which is exactly 0 at half time (float32 cos(pi/2) is not).
        return (jnp.float32(alpha) / 2.0 * (1.0 + jnp.sin(jnp.pi * (0.5 - t)))).astype(jnp.float32)
    return (jnp.float32(alpha) * (1.0 - t)).astype(jnp.float32)


def cubic_sparsity(step, initial_sparsity: float, final_sparsity: float, start_step: int, end_step: int):
    """Zhu & Gupta's gradual-pruning curve ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3``.

    ``t0 = start_step`` and ``n dt = end_step - start_step``; ``s_t = s_i`` before ``t0`` and ``s_f``
    from ``end_step`` on.

    References:
        Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning for model
        compression".
    """
    if end_step <= start_step:
        raise ValueError(f"end_step must be greater than start_step; got {start_step}..{end_step}.")
    t = jnp.clip((jnp.asarray(step, jnp.float32) - start_step) / float(end_step - start_step), 0.0, 1.0)
    return (final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - t) ** 3).astype(jnp.float32)
