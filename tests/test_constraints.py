"""Dale's-law sign constraints: initial signs, projection after updates, counts, neuron level."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dynalign.config import ConstraintConfig
from dynalign.constraints import (
    SignConstraint,
    SignConstraintError,
    counts_to_ints,
    make_constraint,
)
from dynalign.feedback import FeedbackLayer, Linear, feedback_layers
from dynalign.rules import attach_rule, make_rule


class ConvWeight(FeedbackLayer):
    """Stand-in for a conv feedback layer: only the (out, in, kh, kw) weight matters here."""

    def __init__(self, out_ch: int, in_ch: int, k: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, k, k))


class Net(nn.Module):
    def __init__(self, sizes=(6, 5, 4), conv: bool = False):
        super().__init__()
        self.fc1 = Linear(sizes[0], sizes[1])
        self.fc2 = Linear(sizes[1], sizes[2])
        if conv:
            self.conv = ConvWeight(3, 4)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def wrong_side_count(weight: torch.Tensor, sign: torch.Tensor) -> int:
    """Entries whose sign is the opposite of the fixed sign (zero is on neither side)."""
    return int((torch.sign(weight) == -sign).sum())


@pytest.mark.parametrize("level", ["synapse", "neuron"])
def test_initial_weights_take_the_signs_and_keep_their_magnitudes(level):
    torch.manual_seed(0)
    net = Net(conv=True)
    before = {n: m.weight.detach().abs().clone() for n, m in feedback_layers(net).items()}
    c = SignConstraint(feedback_layers(net), level, 0.5, gen())
    assert set(c.signs) == {"fc1", "fc2", "conv"}
    for name, layer in feedback_layers(net).items():
        sign = c.signs[name]
        assert sign.shape == layer.weight.shape
        assert sign.dtype == layer.weight.dtype and sign.device == layer.weight.device
        assert set(sign.unique().tolist()) <= {-1.0, 1.0}
        torch.testing.assert_close(layer.weight.detach().abs(), before[name], rtol=0, atol=0)
        assert wrong_side_count(layer.weight.detach(), sign) == 0
        # both signs occur, so the weights really were changed where the sign is negative
        assert (sign > 0).any() and (sign < 0).any()


def test_neuron_level_signs_are_constant_along_each_input_column():
    net = Net(sizes=(40, 30, 20), conv=True)
    c = SignConstraint(feedback_layers(net), "neuron", 0.5, gen(3))
    for name in ("fc1", "fc2"):
        sign = c.signs[name]
        assert torch.equal(sign, sign[:1].expand_as(sign)), name  # every row equals the first
        # and the columns are not all the same: the sign varies with the input index
        assert sign[0].unique().numel() == 2
    conv = c.signs["conv"]  # (out, in, kh, kw): constant per input channel
    for j in range(conv.shape[1]):
        assert conv[:, j].unique().numel() == 1


@pytest.mark.parametrize(
    ("level", "shape", "tol"),
    [
        ("synapse", (200, 300), 0.01),  # 60,000 draws: sd 0.0016
        ("neuron", (3, 4000), 0.03),  # 4,000 draws: sd 0.0063
    ],
)
def test_excitatory_fraction_is_respected(level, shape, tol):
    layer = Linear(shape[1], shape[0])
    for fraction in (0.2, 0.8):
        c = SignConstraint({"fc": layer}, level, fraction, gen(7))
        sign = c.signs["fc"]
        per_unit = sign if level == "synapse" else sign[0]
        assert abs(float((per_unit > 0).double().mean()) - fraction) < tol
    assert bool((SignConstraint({"fc": layer}, level, 1.0, gen()).signs["fc"] > 0).all())
    assert bool((SignConstraint({"fc": layer}, level, 0.0, gen()).signs["fc"] < 0).all())


def test_same_seed_same_signs():
    a = SignConstraint(feedback_layers(Net()), "synapse", 0.6, gen(11)).signs
    b = SignConstraint(feedback_layers(Net()), "synapse", 0.6, gen(11)).signs
    c = SignConstraint(feedback_layers(Net()), "synapse", 0.6, gen(12)).signs
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_weight_pushed_across_zero_is_zeroed_and_counted():
    layer = Linear(4, 2)
    c = SignConstraint({"fc": layer}, "synapse", 0.5, gen(1))
    sign = c.signs["fc"]
    with torch.no_grad():
        layer.weight.copy_(sign * 0.5)  # every weight on its own side, magnitude 0.5
        push = torch.zeros_like(sign)
        push[0, 0] = -0.8 * sign[0, 0]  # crosses zero
        push[1, 2] = -0.8 * sign[1, 2]  # crosses zero
        push[0, 1] = -0.3 * sign[0, 1]  # shrinks but stays on its side
        layer.weight.add_(push)
    counts = c.project()
    assert int(counts["fc"]) == 2
    w = layer.weight.detach()
    assert w[0, 0].item() == 0.0 and w[1, 2].item() == 0.0
    torch.testing.assert_close(w[0, 1], 0.2 * sign[0, 1])
    untouched = torch.ones_like(w, dtype=torch.bool)
    untouched[0, 0] = untouched[1, 2] = untouched[0, 1] = False
    torch.testing.assert_close(w[untouched], 0.5 * sign[untouched])
    # nothing is wrong now: a second projection counts nothing and changes nothing
    again = c.project()
    assert int(again["fc"]) == 0
    torch.testing.assert_close(layer.weight.detach(), w)


def test_zeroed_weight_grows_again_on_its_own_side_and_is_counted_when_pushed_wrong():
    layer = Linear(3, 3)
    c = SignConstraint({"fc": layer}, "synapse", 0.5, gen(2))
    s = c.signs["fc"][1, 1]
    with torch.no_grad():
        layer.weight[1, 1] = -0.1 * s
    assert int(c.project()["fc"]) == 1
    assert layer.weight[1, 1].item() == 0.0
    with torch.no_grad():
        layer.weight[1, 1] += 0.07 * s  # grows on its own side
    assert int(c.project()["fc"]) == 0
    assert layer.weight[1, 1].item() == pytest.approx(0.07 * s.item())
    with torch.no_grad():
        layer.weight[1, 1] = 0.0
        layer.weight[1, 1] -= 0.02 * s  # from zero, further to the wrong side
    assert int(c.project()["fc"]) == 1
    assert layer.weight[1, 1].item() == 0.0


@settings(max_examples=25, deadline=None)
@given(
    level=st.sampled_from(["synapse", "neuron"]),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    n_in=st.integers(1, 12),
    n_out=st.integers(1, 12),
    scale=st.floats(0.01, 2.0),
)
def test_random_updates_never_leave_a_wrong_sign(level, fraction, seed, n_in, n_out, scale):
    layer = Linear(n_in, n_out)
    c = SignConstraint({"fc": layer}, level, fraction, gen(seed))
    sign = c.signs["fc"]
    noise = gen(seed + 1)
    for _ in range(20):
        with torch.no_grad():
            layer.weight.add_(scale * torch.randn(layer.weight.shape, generator=noise))
        expected = wrong_side_count(layer.weight.detach(), sign)
        counts = c.project()
        assert int(counts["fc"]) == expected
        assert wrong_side_count(layer.weight.detach(), sign) == 0


def test_biases_and_feedback_are_not_touched():
    torch.manual_seed(0)
    net = Net()
    attach_rule(net, make_rule("fa"), gen(5))
    biases = {n: m.bias.detach().clone() for n, m in feedback_layers(net).items()}
    feedback = {n: m.feedback.clone() for n, m in feedback_layers(net).items()}
    c = SignConstraint(feedback_layers(net), "synapse", 0.5, gen())
    with torch.no_grad():
        for m in feedback_layers(net).values():
            m.weight.add_(torch.randn_like(m.weight))
            m.bias.mul_(-1)  # a bias may take any sign
    c.project()
    for name, m in feedback_layers(net).items():
        torch.testing.assert_close(m.bias.detach(), -biases[name], rtol=0, atol=0)
        torch.testing.assert_close(m.feedback, feedback[name], rtol=0, atol=0)


def test_training_with_an_optimiser_keeps_the_signs():
    torch.manual_seed(0)
    net = Net(sizes=(8, 16, 3))
    c = make_constraint(ConstraintConfig(sign="neuron", excitatory_fraction=0.8), net, gen())
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    total = 0
    for _ in range(15):
        loss = nn.functional.cross_entropy(net.fc2(torch.relu(net.fc1(x))), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        counts = c.project()
        total += sum(counts_to_ints(counts).values())
        for name, m in feedback_layers(net).items():
            assert wrong_side_count(m.weight.detach(), c.signs[name]) == 0
    assert total > 0  # with this large a step some updates did try to flip a sign


def test_counts_are_int64_scalars_and_convert_to_ints():
    net = Net()
    c = SignConstraint(feedback_layers(net), "synapse", 0.5, gen())
    counts = c.project()
    assert set(counts) == {"fc1", "fc2"}
    assert all(v.dtype == torch.int64 and v.dim() == 0 for v in counts.values())
    assert counts_to_ints(counts) == {"fc1": 0, "fc2": 0}
    assert counts_to_ints({}) == {}


def test_signs_follow_the_model_to_another_dtype():
    net = Net()
    c = SignConstraint(feedback_layers(net), "synapse", 0.5, gen())
    net.double()
    with torch.no_grad():
        net.fc1.weight.add_(torch.randn_like(net.fc1.weight))
    c.project()
    assert c.signs["fc1"].dtype == torch.float64
    assert wrong_side_count(net.fc1.weight.detach(), c.signs["fc1"]) == 0


def test_make_constraint():
    net = Net()
    assert make_constraint(ConstraintConfig(sign="none"), net, gen()) is None
    c = make_constraint(ConstraintConfig(sign="synapse", excitatory_fraction=0.3), net, gen())
    assert isinstance(c, SignConstraint)
    assert c.level == "synapse" and c.excitatory_fraction == 0.3
    assert list(c.signs) == ["fc1", "fc2"]


def test_bad_input_gives_clear_errors():
    layers = feedback_layers(Net())
    with pytest.raises(SignConstraintError, match="level 'dendrite' is unknown"):
        SignConstraint(layers, "dendrite", 0.5, gen())
    with pytest.raises(SignConstraintError, match="between 0 and 1"):
        SignConstraint(layers, "synapse", 1.5, gen())
    with pytest.raises(SignConstraintError, match="at least one feedback layer"):
        make_constraint(ConstraintConfig(sign="synapse"), nn.Sequential(nn.Linear(2, 2)), gen())
    vector = FeedbackLayer()
    vector.weight = nn.Parameter(torch.ones(3))
    with pytest.raises(SignConstraintError, match="1-D weight.*use level 'synapse'"):
        SignConstraint({"v": vector}, "neuron", 0.5, gen())
    assert issubclass(SignConstraintError, ValueError)


@pytest.mark.parametrize("level", ["synapse", "neuron"])
def test_balance_scales_inhibition_so_mean_input_is_zero_and_keeps_the_norm(level):
    torch.manual_seed(0)
    layer = Linear(400, 300)
    magnitude = layer.weight.detach().abs().double().clone()
    c = SignConstraint({"fc": layer}, level, 0.8, gen(4), balance=True)
    sign = c.signs["fc"].double()
    w = layer.weight.detach().double()
    # independent float64 construction: inhibitory x 0.8/0.2 = 4, then one factor for the norm
    scaled = magnitude * torch.where(sign < 0, 4.0, 1.0)
    expected = sign * scaled * (magnitude.norm() / scaled.norm())
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(w.norm(), magnitude.norm(), rtol=1e-6, atol=0)
    assert torch.equal(torch.sign(w), sign)  # signs untouched
    # a unit driven by equal non-negative inputs gets about zero net input on average;
    # unbalanced, the same signs give a clearly positive mean (0.8 - 0.2 of the magnitudes)
    balanced_mean = float(w.sum(1).mean() / w.abs().sum(1).mean())
    unbalanced = sign * magnitude
    unbalanced_mean = float(unbalanced.sum(1).mean() / unbalanced.abs().sum(1).mean())
    assert abs(balanced_mean) < 0.1
    assert unbalanced_mean > 0.4
    # projection is unchanged by balancing: a correct-side weight is left alone
    assert int(c.project()["fc"]) == 0


def test_balance_is_off_by_default_and_set_from_the_config():
    from dynalign.config import build_config

    assert ConstraintConfig().balance is False
    assert build_config(overrides={"constraint.balance": "true"}).constraint.balance is True
    torch.manual_seed(1)
    plain, balanced = Net(sizes=(30, 20, 10)), Net(sizes=(30, 20, 10))
    balanced.load_state_dict(plain.state_dict())
    cfg = ConstraintConfig(sign="synapse", excitatory_fraction=0.75)
    a = make_constraint(cfg, plain, gen(9))
    b = make_constraint(dataclasses.replace(cfg, balance=True), balanced, gen(9))
    assert not a.balance and b.balance
    inhibitory = b.signs["fc1"] < 0
    ratio = balanced.fc1.weight.detach()[inhibitory] / plain.fc1.weight.detach()[inhibitory]
    excit = balanced.fc1.weight.detach()[~inhibitory] / plain.fc1.weight.detach()[~inhibitory]
    # inhibitory weights are 3x (0.75 / 0.25) the excitatory ones, relative to the plain init
    torch.testing.assert_close(ratio / excit.mean(), torch.full_like(ratio, 3.0))


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_balance_needs_both_signs(fraction):
    with pytest.raises(SignConstraintError, match="balance needs both excitatory and inhibitory"):
        SignConstraint(feedback_layers(Net()), "synapse", fraction, gen(), balance=True)
