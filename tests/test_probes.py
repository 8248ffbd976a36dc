"""Probe arithmetic against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from dynalign.probes import angle, gram_is_cheaper, update_angle


def test_angle_exact_and_against_arccos():
    a = torch.randn(1000)
    assert angle(a, a).item() == 0.0
    assert angle(a, a.clone()).item() == 0.0
    assert angle(a, -a).item() == pytest.approx(180.0)
    b = torch.randn(1000)
    cos = (a.double() @ b.double() / a.double().norm() / b.double().norm()).item()
    assert angle(a, b).item() == pytest.approx(math.degrees(math.acos(cos)), abs=1e-5)
    assert math.isnan(angle(a, torch.zeros(1000)).item())


@pytest.mark.parametrize("rows", [5, 40])
def test_gram_update_angle_equals_angle_of_formed_gradients(rows):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 300, generator=g)
    d_rule = torch.randn(rows, 200, generator=g)
    d_bp = d_rule + 0.7 * torch.randn(rows, 200, generator=g)
    g_rule, g_bp = d_rule.T @ x, d_bp.T @ x
    assert gram_is_cheaper(x, d_rule)
    via_gram = update_angle(g_rule, None, x, d_rule, d_bp).item()
    direct = angle(g_rule.double(), g_bp.double()).item()
    assert 5 < direct < 175
    assert via_gram == pytest.approx(direct, abs=1e-3)
    assert update_angle(g_rule, g_bp, x, d_rule, d_bp).item() == pytest.approx(direct, abs=1e-3)
    assert update_angle(g_rule, None, x, d_rule, d_rule.clone()).item() == 0.0


def test_gram_not_chosen_when_rows_outnumber_features():
    assert not gram_is_cheaper(torch.zeros(1024, 128), torch.zeros(1024, 128))
    assert gram_is_cheaper(torch.zeros(100, 3072), torch.zeros(100, 512))


def test_sign_counts_numpy_and_torch_paths_agree_with_a_direct_count():
    from dynalign.probes import sign_counts

    g = torch.Generator().manual_seed(3)
    before = torch.randn(300, 200, generator=g)
    after = before + 0.3 * torch.randn(300, 200, generator=g)
    after[:5] = 0.0  # zeroed weights: not flips
    before[5:8] = 0.0  # weights growing from zero: not flips either
    expected_flips = sum(
        1
        for b, a in zip(before.flatten().tolist(), after.flatten().tolist(), strict=True)
        if b * a < 0
    )
    expected_zeros = sum(1 for a in after.flatten().tolist() if a == 0)
    assert 0 < expected_flips and expected_zeros == 1000
    flips, zeros = sign_counts(before, after)  # numpy path (CPU float)
    assert (int(flips), int(zeros)) == (expected_flips, expected_zeros)
    flips, zeros = sign_counts(before.half(), after.half())  # torch path
    assert int(zeros) == expected_zeros
    assert abs(int(flips) - expected_flips) <= 5  # half precision may round tiny products to 0
