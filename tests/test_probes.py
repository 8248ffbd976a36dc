"""Probe arithmetic against direct computations (the angles themselves: test_angles)."""

from __future__ import annotations

import pytest
import torch

from dynalign.angles import angle, gram_angle
from dynalign.reference import gram_is_cheaper


@pytest.mark.parametrize("rows", [5, 40])
def test_gram_update_angle_equals_angle_of_formed_gradients(rows):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 300, generator=g)
    d_rule = torch.randn(rows, 200, generator=g)
    d_bp = d_rule + 0.7 * torch.randn(rows, 200, generator=g)
    g_rule, g_bp = d_rule.T @ x, d_bp.T @ x
    assert gram_is_cheaper(x, d_rule)
    via_gram = gram_angle(d_rule, d_bp, x)
    direct = angle(g_rule.double(), g_bp.double())
    assert 5 < direct < 175
    assert via_gram == pytest.approx(direct, abs=1e-3)
    assert gram_angle(d_rule, d_rule.clone(), x) == 0.0


def test_gram_not_chosen_when_rows_outnumber_features():
    assert not gram_is_cheaper(torch.zeros(1024, 128), torch.zeros(1024, 128))
    assert gram_is_cheaper(torch.zeros(100, 3072), torch.zeros(100, 512))


def _direct_weight_step(before, after, feedback):
    """The same reductions element by element in Python floats (float64)."""
    b, a = before.flatten().tolist(), after.flatten().tolist()
    f = feedback.flatten().tolist()
    return {
        "weight_sq": sum(x * x for x in a),
        "update_sq": sum((x - y) ** 2 for x, y in zip(b, a, strict=True)),
        "sign_flips": sum(1 for x, y in zip(b, a, strict=True) if (x < 0 < y) or (y < 0 < x)),
        "zeros": sum(1 for y in a if y == 0),
        "feedback_dot": sum(x * y for x, y in zip(a, f, strict=True)),
        "feedback_sq": sum(x * x for x in f),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_weight_step_equals_a_direct_computation(dtype):
    """The compiled CPU sweep (float32, float64) and the tensor path (float16) against Python
    arithmetic, with zeros before and after and flips between values so small that their
    product underflows float32."""
    from dynalign.weight_step import weight_step

    g = torch.Generator().manual_seed(3)
    before = torch.randn(300, 230, generator=g, dtype=torch.float64)
    after = before + 0.3 * torch.randn(300, 230, generator=g, dtype=torch.float64)
    feedback = torch.randn(300, 230, generator=g, dtype=torch.float64)
    after[:5] = 0.0  # zeroed weights: not flips
    before[5:8] = 0.0  # weights growing from zero: not flips either
    before[290, :4], after[290, :4] = 1e-30, torch.tensor([-1e-30, 1e-30, -2e-30, 0.0])
    before, after, feedback = before.to(dtype), after.to(dtype), feedback.to(dtype)
    if dtype == torch.float16:  # 1e-30 is zero in half precision: keep the tiny flips in range
        before[290, :4], after[290, :4] = 1e-7, torch.tensor([-1e-7, 1e-7, -1e-7, 0.0])
    expected = _direct_weight_step(before.double(), after.double(), feedback.double())
    assert 0 < expected["sign_flips"] and expected["zeros"] >= 5 * 230
    got = weight_step(before, after, feedback)
    assert int(got.sign_flips) == expected["sign_flips"]
    assert int(got.zeros) == expected["zeros"]
    rel = 1e-3 if dtype == torch.float16 else 1e-12  # the sweep sums in float64
    for name in ("weight_sq", "update_sq", "feedback_dot", "feedback_sq"):
        value = float(getattr(got, name))
        assert value == pytest.approx(expected[name], rel=rel, abs=rel), name
    without = weight_step(before, after, None)
    assert without.feedback_dot is None and without.feedback_sq is None
    assert float(without.weight_sq) == pytest.approx(float(got.weight_sq), rel=1e-12)
