"""Mixed-ReLU: per-unit fixed signs, outputs, gradients, broadcasting over channels."""

from __future__ import annotations

import pytest
import torch

from dynalign.activations import MixedReLU
from dynalign.models.mlp import make_activation


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def expected(z: torch.Tensor, excitatory: torch.Tensor) -> torch.Tensor:
    """max(z, 0) where the unit is excitatory, min(z, 0) where it is inhibitory."""
    return torch.where(excitatory, z.clamp(min=0), z.clamp(max=0))


def test_sign_buffer():
    act = MixedReLU(10, 0.5, gen())
    assert act.sign.shape == (10,) and act.sign.dtype == torch.get_default_dtype()
    assert set(act.sign.unique().tolist()) == {-1.0, 1.0}
    assert "sign" in act.state_dict()
    assert torch.equal(act.sign, MixedReLU(10, 0.5, gen()).sign)  # same seed, same signs


def test_outputs_carry_the_unit_sign_and_equal_z_where_it_agrees():
    act = MixedReLU(16, 0.5, gen(1))
    z = torch.randn(64, 16, generator=gen(2))
    out = act(z)
    exc = act.sign > 0
    assert bool((out[:, exc] >= 0).all()) and bool((out[:, ~exc] <= 0).all())
    agrees = torch.sign(z) == act.sign
    assert torch.equal(out[agrees], z[agrees])
    assert bool((out[~agrees] == 0).all())
    assert torch.equal(out, expected(z, exc.expand_as(z)))


def test_broadcasts_per_channel_on_4d_inputs():
    act = MixedReLU(5, 0.5, gen(3))
    z = torch.randn(2, 5, 4, 3, generator=gen(4))
    out = act(z)
    for c in range(5):
        exc = bool(act.sign[c] > 0)
        assert torch.equal(out[:, c], z[:, c].clamp(min=0) if exc else z[:, c].clamp(max=0))


def test_gradient_matches_finite_differences_away_from_zero():
    act = MixedReLU(6, 0.5, gen(5)).double()
    z = torch.randn(4, 6, 2, generator=gen(6), dtype=torch.float64)
    z = (z + 0.2 * torch.sign(z)).requires_grad_()  # no entry within 0.2 of the kink
    assert torch.autograd.gradcheck(act, (z,), eps=1e-6, atol=1e-8)
    (grad,) = torch.autograd.grad(act(z).sum(), z)
    passes = torch.sign(z.detach()) == act.sign.reshape(1, -1, 1)
    assert torch.equal(grad, passes.double())  # slope 1 where the unit passes z, else 0


def test_excitatory_fraction_is_respected():
    for fraction in (0.25, 0.8):
        act = MixedReLU(20000, fraction, gen(7))
        assert abs(float((act.sign > 0).double().mean()) - fraction) < 0.015  # sd <= 0.0035
    assert bool((MixedReLU(50, 1.0, gen()).sign > 0).all())
    assert bool((MixedReLU(50, 0.0, gen()).sign < 0).all())


def test_make_activation_builds_it():
    act = make_activation("mixed_relu", 12, gen(), 0.7)
    assert isinstance(act, MixedReLU) and act.num_units == 12


def test_follows_the_module_dtype():
    act = MixedReLU(3, 0.5, gen()).double()
    z = torch.randn(2, 3, dtype=torch.float64)
    assert act(z).dtype == torch.float64


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="positive int"):
        MixedReLU(0, 0.5, gen())
    with pytest.raises(ValueError, match="between 0 and 1"):
        MixedReLU(4, -0.1, gen())
    with pytest.raises(ValueError, match=r"4 units along dim 1.*\(3, 5\)"):
        MixedReLU(4, 0.5, gen())(torch.zeros(3, 5))
