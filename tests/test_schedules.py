"""Schedules against their formulas."""

import math

import numpy as np
import pytest

from dst import schedules


@pytest.mark.parametrize("t", [0, 1, 37, 250, 499, 500, 900])
def test_cosine_drop_fraction_formula(t):
    alpha, end = 0.3, 500
    expected = alpha / 2 * (1 + math.cos(math.pi * min(t, end) / end))
    assert float(schedules.drop_fraction(t, alpha, "cosine", end)) == pytest.approx(expected, abs=1e-7)


def test_linear_and_constant_drop_fraction():
    assert float(schedules.drop_fraction(250, 0.4, "linear", 1000)) == pytest.approx(0.3)
    assert float(schedules.drop_fraction(12345, 0.4, "constant")) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="drop_schedule"):
        schedules.drop_fraction(0, 0.3, "exponential", 100)


def test_update_step_predicate():
    due = [int(t) for t in range(0, 400) if schedules.is_update_step(t, 100, start_step=50, end_step=350)]
    assert due == [50, 150, 250]


@pytest.mark.parametrize("t", [0, 100, 150, 400, 1000, 1200])
def test_zhu_gupta_cubic(t):
    si, sf, t0, t1 = 0.0, 0.9, 100, 1000
    frac = np.clip((t - t0) / (t1 - t0), 0, 1)
    expected = sf + (si - sf) * (1 - frac) ** 3
    assert float(schedules.cubic_sparsity(t, si, sf, t0, t1)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("every,start,end", [(1, 0, 5), (3, 2, 14), (100, 0, 10**6), (4, 7, 8)])
def test_steps_until_update_agrees_with_the_predicate(every, start, end):
    due = [t for t in range(40) if bool(schedules.is_update_step(t, every, start, end))]
    for t in range(40):
        expected = min([u - t for u in due if u >= t], default=None)
        if expected is None and end > 40:  # the next update lies beyond the checked range
            continue
        got = int(schedules.steps_until_update(t, every, start, end, never=-1))
        assert got == (-1 if expected is None else expected), t


@pytest.mark.parametrize("every,start,end", [(1, 0, 5), (3, 2, 14), (4, 1, 11), (5, 7, 8)])
def test_steps_until_pruning_agrees_with_pruning_due(every, start, end):
    from dst.algorithms.gmp import pruning_due
    from dst.algorithms.gmp import steps_until_pruning

    due = [t for t in range(30) if bool(pruning_due(t, every, start, end))]
    assert due[-1] == end   # the last pruning step is always end_step itself
    for t in range(30):
        expected = min([u - t for u in due if u >= t], default=-1)
        assert int(steps_until_pruning(t, every, start, end, never=-1)) == expected, t
