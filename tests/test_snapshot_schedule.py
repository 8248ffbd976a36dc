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


# ------------------------------------------------------------------------------ in a real run


def _snapshot_steps(path) -> list[int]:
    from dynalign.reader import open_run

    run = open_run(path)
    return [int(s) for s in run["snapshots/fc1"].ds.snapshot_step.values]


def test_a_run_snapshots_on_the_budgeted_log_schedule(tmp_path, tiny_config):
    """Default: log-spaced, as many as the budget holds (here 3 of this net's snapshots); a B
    the rule never changes (FA's) is stored once and counted once, a renewed one (usf's) in
    every snapshot."""
    from dynalign.record import record

    # fc1 64x32, fc2 32x32, fc3 10x32 in float32: W, and B of the same shapes
    weights = (64 * 32 + 32 * 32 + 10 * 32) * 4
    budgets = {"fa": weights + 3.5 * weights, "usf": 3.5 * 2 * weights}
    total = 2 * 6  # 2 epochs of 300 / 50 steps
    for rule, budget in budgets.items():
        config = tiny_config(
            **{
                "rule.name": rule,
                "probes.snapshot_every": None,
                "probes.snapshot_budget": budget / 1e6,
            }
        )
        path = tmp_path / f"{rule}.zarr"
        assert record(config, path, progress=False).status == "completed"
        assert _snapshot_steps(path) == list(log_spaced(total, 3)) == [0, 3, 12], rule
        chunks = [f for f in (path / "snapshots").rglob("*") if f.is_file()]
        written = sum(f.stat().st_size for f in chunks if f.name != "zarr.json")
        stored = {"fa": 3 * weights + weights, "usf": 3 * 2 * weights}[rule]
        assert written == pytest.approx(stored, rel=0.01), rule  # W, B, a step each


def test_half_precision_snapshots_hold_the_weights_to_float16(tmp_path, tiny_config):
    import numpy as np

    from dynalign.reader import open_run
    from dynalign.record import record

    for dtype in ("float32", "float16"):
        config = tiny_config(**{"probes.snapshot_every": 6, "probes.snapshot_dtype": dtype})
        record(config, tmp_path / f"{dtype}.zarr", progress=False)
    full = open_run(tmp_path / "float32.zarr")["snapshots/fc2"].ds
    half = open_run(tmp_path / "float16.zarr")["snapshots/fc2"].ds
    assert half.weight.dtype == np.float16 and half.feedback.dtype == np.float16
    assert full.weight.dtype == np.float32
    # the same run (same seed): the half-precision copy rounds each weight to 11 bits
    np.testing.assert_allclose(half.weight.values, full.weight.values, rtol=2**-11, atol=1e-7)
    assert not np.array_equal(half.weight.values.astype(np.float32), full.weight.values)


def test_a_bad_snapshot_setting_is_refused_with_the_fix():
    from dynalign.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="float32, float16"):
        build_config(overrides={"probes.snapshot_dtype": "float8"})
    with pytest.raises(ConfigError, match="greater than 0"):
        build_config(overrides={"probes.snapshot_budget": 0})
