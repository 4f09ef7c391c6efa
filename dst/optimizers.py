"""Optax optimizers and learning-rate schedules from plain settings (what ``conf/optimizer`` holds)."""

from __future__ import annotations

import optax

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine")


def learning_rate(lr: float, schedule: str, total_steps: int, warmup_steps: int = 0,
                  milestones=(0.5, 0.75), gamma: float = 0.1, step_every: int | None = None) -> optax.Schedule:
    """``constant``, ``step`` (``lr *= gamma`` at each milestone fraction of the run, or every
    ``step_every`` steps when that is set, as RigL's ``0.1 x 0.2 every 30k steps``) or ``cosine``
    decay to zero, each after ``warmup_steps`` of linear warm-up from zero."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"optimizer.schedule must be one of {', '.join(LR_SCHEDULES)}; got {schedule!r}.")
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1))
    if schedule == "step":
        steps = (range(step_every, total_steps, step_every) if step_every
                 else [int(m * total_steps) for m in milestones])
        main = optax.piecewise_constant_schedule(lr, {s - warmup_steps: gamma for s in steps})
    else:
        main = optax.constant_schedule(lr)
    if warmup_steps == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), main], [warmup_steps])


def make_optimizer(name: str, total_steps: int, *, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9, nesterov: bool = False, b1: float = 0.9, b2: float = 0.999,
                   schedule: str = "constant", warmup_steps: int = 0, milestones=(0.5, 0.75),
                   gamma: float = 0.1, step_every: int | None = None) -> optax.GradientTransformation:
    """SGD (momentum, Nesterov, L2 weight decay), Adam (L2) or AdamW (decoupled decay), with an lr
    schedule. Inactive weights stay put: their gradients are masked and their params are zero, so
    weight decay adds nothing there either."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name must be one of {', '.join(OPTIMIZERS)}; got {name!r}.")
    lr_fn = learning_rate(lr, schedule, total_steps, warmup_steps, milestones, gamma, step_every)
    if name == "adamw":
        return optax.adamw(lr_fn, b1=b1, b2=b2, weight_decay=weight_decay)
    if name == "sgd":
        core = optax.sgd(lr_fn, momentum=momentum or None, nesterov=nesterov)
    else:
        core = optax.adam(lr_fn, b1=b1, b2=b2)
    return optax.chain(optax.add_decayed_weights(weight_decay), core) if weight_decay else core
