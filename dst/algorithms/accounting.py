"""What an algorithm reports about itself to the run's logs: training FLOPs per step (the RigL paper's
appendix accounting) and its drop fraction at a step.

With ``f_S`` the sparse and ``f_D`` the dense forward cost of one example, a training step costs
``3 f_S`` for sparse training at the current densities (forward, input gradient, weight gradient;
``3 f_D`` when every layer is dense). Algorithms that need dense weight gradients pay for them:
RigL and GraNet one every ``dT`` steps while they update, ``(3 f_S dT + 2 f_S + f_D) / (dT + 1)`` on
average; SNFS every step, ``2 f_S + f_D``; Top-KAST weight gradients over its backward set,
``2 f_S + f_B``.

A ``StepFlops`` is ``flops(step, f_sparse, f_dense, f_backward) -> float`` (FLOPs of one example at
that step); a ``DropFractionAt`` is ``drop_fraction_at(step) -> float``. Both run on the host.
"""

from __future__ import annotations

from collections.abc import Callable

StepFlops = Callable[[int, float, float, float], float]
DropFractionAt = Callable[[int], float]


def sparse_step_flops(step: int, f_sparse: float, f_dense: float, f_backward: float) -> float:
    """``3 f_S``: forward, input gradient and weight gradient, all at the current densities."""
    del step, f_dense, f_backward
    return 3.0 * f_sparse


def periodic_dense_gradient(update_every: int, start_step: int, end_step: int) -> StepFlops:
    """RigL, GraNet: one dense weight gradient every ``update_every`` steps in ``[start_step, end_step)``."""

    def flops(step, f_sparse, f_dense, f_backward):
        if start_step <= step < end_step:
            return (3.0 * f_sparse * update_every + 2.0 * f_sparse + f_dense) / (update_every + 1)
        return sparse_step_flops(step, f_sparse, f_dense, f_backward)

    return flops


def dense_gradient_every_step(step: int, f_sparse: float, f_dense: float, f_backward: float) -> float:
    """SNFS: a dense weight gradient every step for its momentum, ``2 f_S + f_D``."""
    del step, f_backward
    return 2.0 * f_sparse + f_dense


def backward_set_gradient(step: int, f_sparse: float, f_dense: float, f_backward: float) -> float:
    """Top-KAST: weight gradients over the backward set, ``2 f_S + f_B``."""
    del step, f_dense
    return 2.0 * f_sparse + f_backward


def windowed(fraction: Callable[[int], float], start_step: int, end_step: int,
             *, inclusive_end: bool = False) -> DropFractionAt:
    """``fraction(step)`` inside the update window, 0 outside it."""

    def at(step: int) -> float:
        inside = start_step <= step <= end_step if inclusive_end else start_step <= step < end_step
        return float(fraction(step)) if inside else 0.0

    return at
