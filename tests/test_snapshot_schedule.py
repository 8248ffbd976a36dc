"""The snapshot schedule: log-spaced within a byte budget by default, or every k steps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynalign.snapshot_schedule import (
    MAX_SNAPSHOTS,
    budget_count,
    every_k,
    log_spaced,
    snapshot_steps,
)


@pytest.mark.parametrize(
    ("total", "count", "expected"),
    [
        (6000, 5, (0, 8, 76, 681, 6000)),  # exp(log(6001) * i / 4) - 1, rounded
        (10, 40, tuple(range(11))),  # a short run: every step
        (1, 2, (0, 1)),
        (0, 5, (0,)),
    ],
)
def test_log_spaced_known_runs(total, count, expected):
    assert log_spaced(total, count) == expected


@given(st.integers(1, 100_000), st.integers(2, 60))
def test_log_spaced_is_distinct_sorted_and_ends_at_both_ends(total, count):
    steps = log_spaced(total, count)
    assert steps[0] == 0 and steps[-1] == total
    assert list(steps) == sorted(set(steps))
    assert len(steps) == min(count, total + 1)


def test_log_spaced_is_dense_early_and_sparse_late():
    steps = log_spaced(6000, 40)
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert gaps[:5] == [1, 1, 1, 1, 1]
    assert gaps == sorted(gaps)  # never denser later
    # away from the integer floor the ratio of successive (step + 1) is constant
    ratios = [(b + 1) / (a + 1) for a, b in zip(steps[20:], steps[21:], strict=False)]
    expected = math.exp(math.log(6001) / 39)
    assert all(abs(r - expected) < 0.02 for r in ratios)


@pytest.mark.parametrize(
    ("total", "every", "expected"),
    [(390, 100, (0, 100, 200, 300, 390)), (300, 100, (0, 100, 200, 300)), (50, 0, ())],
)
def test_every_k(total, every, expected):
    assert every_k(total, every) == expected


def test_budget_count_bounds():
    snapshot = 7_400_000  # a 3x512 MLP on 784 inputs: W and B in float32
    assert budget_count(40e6, snapshot) == 5
    assert budget_count(1e6, snapshot) == 2  # always the first and the last
    assert budget_count(1e12, snapshot) == MAX_SNAPSHOTS


def test_snapshot_steps_chooses_the_schedule():
    assert snapshot_steps(390, 100, 40.0, 10**6) == (0, 100, 200, 300, 390)
    budgeted = snapshot_steps(6000, None, 40.0, 7_400_000)
    assert budgeted == log_spaced(6000, 5)
    assert len(snapshot_steps(6000, None, 40.0, 1_000)) == MAX_SNAPSHOTS
