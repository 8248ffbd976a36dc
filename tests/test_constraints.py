"""Dale's-law sign constraints: initial signs, projection after updates, counts, neuron level,
crossed vs pushed counts and the optimiser-state reset."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dynalign.config import ConstraintConfig
from dynalign.constraints import (
    ProjectionCounts,
    SignConstraint,
    SignConstraintError,
    counts_to_ints,
    make_constraint,
    projection_counts_to_ints,
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
    assert all(
        t.dtype == torch.int64 and t.dim() == 0
        for v in counts.values()
        for t in (v.crossed, v.pushed)
    )
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


# -- crossed vs pushed ----------------------------------------------------------------------------


def reference_counts(before: torch.Tensor, after: torch.Tensor, sign: torch.Tensor):
    """(crossed, pushed) from a copy of W before the step and W after it, before projection."""
    wrong = after * sign < 0
    return int((wrong & (before != 0)).sum()), int((wrong & (before == 0)).sum())


def test_counts_split_into_crossed_and_pushed_by_where_the_weight_was():
    layer = Linear(3, 4)
    c = SignConstraint({"fc": layer}, "synapse", 0.5, gen(1))
    s = c.signs["fc"]
    with torch.no_grad():
        layer.weight.copy_(0.5 * s)
        layer.weight[0, 0] = layer.weight[0, 1] = layer.weight[1, 0] = 0.0
    c.refresh()  # written by hand, not through project(): the constraint must be told
    with torch.no_grad():
        push = torch.zeros_like(s)
        push[0, 0] = -0.1 * s[0, 0]  # pinned at 0, pushed to the wrong side: pushed
        push[0, 1] = 0.2 * s[0, 1]  # pinned at 0, grows on its own side: nothing
        push[1, 0] = -0.3 * s[1, 0]  # pinned at 0, pushed: pushed
        push[2, 2] = -0.8 * s[2, 2]  # 0.5 -> -0.3: crossed
        push[3, 1] = -0.6 * s[3, 1]  # 0.5 -> -0.1: crossed
        push[2, 1] = -0.5 * s[2, 1]  # 0.5 -> exactly 0: on neither side, nothing
        push[3, 2] = -0.2 * s[3, 2]  # shrinks on its own side: nothing
        layer.weight.add_(push)
    counts = c.project()
    k = counts["fc"]
    assert isinstance(k, ProjectionCounts)
    assert (int(k.crossed), int(k.pushed), int(k.attempted)) == (2, 2, 4)
    for value in (k.crossed, k.pushed, k.attempted):
        assert value.dtype == torch.int64 and value.dim() == 0
        assert value.device == layer.weight.device
    assert int(k) == 4 and float(k) == 4.0  # reads as today's attempted count
    assert projection_counts_to_ints(counts) == {"fc": {"crossed": 2, "pushed": 2, "attempted": 4}}
    w = layer.weight.detach()
    for i, j in ((0, 0), (1, 0), (2, 2), (3, 1), (2, 1)):
        assert w[i, j].item() == 0.0
    # next step: [2, 1] reached 0 on its own and [2, 2] was clipped: both count as pushed now;
    # [0, 1] grew to 0.2 and is carried past zero: crossed
    with torch.no_grad():
        push = torch.zeros_like(s)
        push[2, 1] = -0.1 * s[2, 1]
        push[2, 2] = -0.1 * s[2, 2]
        push[0, 1] = -0.3 * s[0, 1]
        layer.weight.add_(push)
    k = c.project()["fc"]
    assert (int(k.crossed), int(k.pushed)) == (1, 2)


@pytest.mark.parametrize("level", ["synapse", "neuron"])
def test_counts_match_a_copy_of_the_weights_before_each_step(level):
    """Independent check: W copied before every step tells pinned from non-zero weights."""
    torch.manual_seed(0)
    net = Net(sizes=(9, 7, 5), conv=True)
    c = SignConstraint(feedback_layers(net), level, 0.6, gen(4))
    noise = gen(5)
    seen = {"crossed": 0, "pushed": 0}
    for _ in range(25):
        before = {n: m.weight.detach().clone() for n, m in feedback_layers(net).items()}
        with torch.no_grad():
            for m in feedback_layers(net).values():
                m.weight.add_(0.7 * torch.randn(m.weight.shape, generator=noise))
        after = {n: m.weight.detach().clone() for n, m in feedback_layers(net).items()}
        counts = c.project()
        for name in counts:
            crossed, pushed = reference_counts(before[name], after[name], c.signs[name])
            assert (int(counts[name].crossed), int(counts[name].pushed)) == (crossed, pushed)
            seen["crossed"] += crossed
            seen["pushed"] += pushed
    assert seen["crossed"] > 0 and seen["pushed"] > 0  # both branches were exercised


def test_conv_weight_at_neuron_level_counts_whole_input_channels():
    layer = ConvWeight(3, 4)
    c = SignConstraint({"conv": layer}, "neuron", 0.5, gen(6))
    s = c.signs["conv"]
    with torch.no_grad():
        layer.weight.copy_(0.5 * s)
        layer.weight[:, 1] = 0.0  # input channel 1 pinned at 0
    c.refresh()
    with torch.no_grad():
        layer.weight[:, 1] -= 0.1 * s[:, 1]  # the pinned channel pushed: 3 x 3 x 3 = 27
        layer.weight[:, 2] -= 1.0 * s[:, 2]  # channel 2 carried across: 27 crossed
        layer.weight[0, 3, 0, 0] -= 0.7 * s[0, 3, 0, 0]  # one more crossing
    k = c.project()["conv"]
    assert (int(k.crossed), int(k.pushed)) == (28, 27)
    assert bool((layer.weight[:, 1:3] == 0).all())


def test_load_state_dict_refreshes_the_masks():
    """A checkpoint restore writes the weights after the constraint was built (resume)."""
    layer = Linear(3, 2)
    c = SignConstraint({"fc": layer}, "synapse", 0.5, gen(7))
    s = c.signs["fc"]
    saved = {"weight": 0.4 * s, "bias": torch.zeros(2)}
    saved["weight"][0, 0] = saved["weight"][1, 2] = 0.0
    layer.load_state_dict(saved)  # no refresh() called
    with torch.no_grad():
        layer.weight.sub_(0.5 * s)  # everything to the wrong side: 2 were at 0, 4 were not
    k = c.project()["fc"]
    assert (int(k.crossed), int(k.pushed)) == (4, 2)
    # through the parent model's load_state_dict as well
    net = Net()
    cn = SignConstraint(feedback_layers(net), "synapse", 0.5, gen(8))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc2.weight"].zero_()
    net.load_state_dict(state)
    with torch.no_grad():
        net.fc2.weight.sub_(cn.signs["fc2"])
    k = cn.project()["fc2"]
    assert (int(k.crossed), int(k.pushed)) == (0, net.fc2.weight.numel())


def test_masks_are_rebuilt_when_missing_or_the_parameter_was_replaced():
    layer = Linear(3, 2)
    c = SignConstraint({"fc": layer}, "synapse", 0.5, gen(9))
    s = c.signs["fc"]
    c._zero.clear()  # masks missing: rebuilt from the current weights at the next projection
    with torch.no_grad():
        layer.weight.copy_(0.3 * s)
        layer.weight[0, 0] = 0.0
    k = c.project()["fc"]
    assert (int(k.crossed), int(k.pushed)) == (0, 0)
    with torch.no_grad():
        layer.weight[0, 0] = -0.1 * s[0, 0]
    assert int(c.project()["fc"].pushed) == 1
    # a new parameter object: the old mask (which has [0, 0] at 0) described another tensor,
    # so it is rebuilt from the new weights, where [0, 0] was not pinned
    layer.weight = nn.Parameter(0.2 * s)
    with torch.no_grad():
        layer.weight[0, 0] = -0.1 * s[0, 0]
    k = c.project()["fc"]
    assert (int(k.crossed), int(k.pushed)) == (1, 0)
    with torch.no_grad():
        layer.weight.sub_(0.3 * s)
    k = c.project()["fc"]
    assert (int(k.crossed), int(k.pushed)) == (5, 1)


def test_projection_counts_to_ints_of_nothing():
    assert projection_counts_to_ints({}) == {}


# -- reset_momentum -------------------------------------------------------------------------------


def sgd_pull_to_target(reset: bool, steps: int = 60):
    """A quadratic pull toward small targets on each weight's own side, from far away.

    SGD with heavy momentum overshoots past zero; the weight is clipped at 0, and the momentum
    it gathered keeps pushing it to the wrong side for several steps while the gradient already
    points back. Returns the summed counts, the reference counts and the layer.
    """
    layer = Linear(10, 8)
    c = SignConstraint({"fc": layer}, "synapse", 0.5, gen(0), reset_momentum=reset)
    s = c.signs["fc"]
    g = gen(1)
    with torch.no_grad():
        layer.weight.copy_(s * (0.5 + torch.rand(s.shape, generator=g)))
        target = s * (0.05 + 0.25 * torch.rand(s.shape, generator=g))
    c.refresh()
    opt = torch.optim.SGD([layer.weight], lr=0.1, momentum=0.9)
    crossed = pushed = 0
    for _ in range(steps):
        before = layer.weight.detach().clone()
        layer.weight.grad = layer.weight.detach() - target
        opt.step()
        after = layer.weight.detach().clone()
        buffer = opt.state[layer.weight]["momentum_buffer"].clone()
        k = c.project(opt)["fc"]
        assert (int(k.crossed), int(k.pushed)) == reference_counts(before, after, s)
        clipped = after * s < 0
        now = opt.state[layer.weight]["momentum_buffer"]
        if reset:
            assert bool((now[clipped] == 0).all())
        else:
            assert torch.equal(now, buffer)
            if clipped.any():
                assert bool((now[clipped] != 0).all())  # the stale push is still there
        assert torch.equal(now[~clipped], buffer[~clipped])  # unclipped state never touched
        crossed += int(k.crossed)
        pushed += int(k.pushed)
    return crossed, pushed


def test_without_reset_stale_momentum_pushes_pinned_weights_again_and_again():
    crossed, pushed = sgd_pull_to_target(reset=False)
    assert crossed > 0
    assert pushed > 3 * crossed  # most attempted flips re-count weights already at 0


def test_reset_momentum_clears_sgd_momentum_of_clipped_weights_and_pushes_fall():
    plain_crossed, plain_pushed = sgd_pull_to_target(reset=False)
    crossed, pushed = sgd_pull_to_target(reset=True)
    assert crossed > 0
    # with a cleared buffer the next step follows the gradient alone, which points back to the
    # weight's own side: a clipped weight is never pushed again here
    assert pushed == 0 < plain_pushed


@pytest.mark.parametrize("amsgrad", [False, True])
def test_reset_momentum_clears_adam_moments_of_clipped_weights(amsgrad):
    layer = ConvWeight(2, 3)
    c = SignConstraint({"conv": layer}, "neuron", 0.5, gen(10), reset_momentum=True)
    s = c.signs["conv"]
    with torch.no_grad():
        layer.weight.copy_(0.1 * s)
    c.refresh()
    opt = torch.optim.Adam([layer.weight], lr=0.3, amsgrad=amsgrad)
    toward_wrong = torch.zeros_like(s, dtype=torch.bool)
    toward_wrong[:, 0] = True  # input channel 0 is pushed across zero, the rest away from it
    toward_wrong[1, 2, 1, 1] = True
    for step in range(3):
        layer.weight.grad = torch.where(toward_wrong, s, -s) * (1.0 + step)
        opt.step()
        state = opt.state[layer.weight]
        before = {key: v.clone() for key, v in state.items()}
        clipped = layer.weight.detach() * s < 0
        assert torch.equal(clipped, toward_wrong)  # the same weights are clipped every step
        c.project(opt)
        keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
        for key in keys:
            assert bool((state[key][clipped] == 0).all()), key
            assert torch.equal(state[key][~clipped], before[key][~clipped]), key
            assert bool((before[key][clipped] != 0).all()), key  # there was something to clear
        assert torch.equal(state["step"], before["step"])  # shared scalar state untouched
        assert bool((layer.weight[clipped] == 0).all())


def test_without_the_flag_optimizer_state_and_weights_are_bit_identical():
    torch.manual_seed(0)
    nets = [Net(sizes=(8, 16, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    cs = [
        make_constraint(ConstraintConfig(sign="neuron", excitatory_fraction=0.8), n, gen())
        for n in nets
    ]
    assert not cs[0].reset_momentum
    opts = [torch.optim.SGD(n.parameters(), lr=0.5, momentum=0.9) for n in nets]
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    clipped = 0
    for _ in range(10):
        for net, opt in zip(nets, opts, strict=True):
            loss = nn.functional.cross_entropy(net.fc2(torch.relu(net.fc1(x))), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        before = {
            id(p): {k: v.clone() for k, v in opts[0].state[p].items()} for p in nets[0].parameters()
        }
        weights = {n: m.weight.detach().clone() for n, m in feedback_layers(nets[0]).items()}
        counts = cs[0].project(opts[0])  # flag off: the optimiser is ignored
        cs[1].project()  # and today's call
        for p in nets[0].parameters():
            for k, v in opts[0].state[p].items():
                assert torch.equal(v, before[id(p)][k])
        for name, m in feedback_layers(nets[0]).items():
            # exactly the old projection: wrong-side weights zeroed, nothing else touched
            expected = weights[name].masked_fill(weights[name] * cs[0].signs[name] < 0, 0.0)
            assert torch.equal(m.weight, expected)
        for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
            assert torch.equal(a, b)
        clipped += sum(counts_to_ints(counts).values())
    assert clipped > 0


def test_reset_momentum_needs_the_optimizer_and_creates_no_state():
    layer = Linear(3, 2)
    c = SignConstraint({"fc": layer}, "synapse", 0.5, gen(), reset_momentum=True)
    with pytest.raises(SignConstraintError, match="reset_momentum=True.*project\\(optimizer\\)"):
        c.project()
    with pytest.raises(SignConstraintError, match="constraint.reset_momentum=false"):
        c.project()
    # plain SGD keeps no per-weight state; a projection must not add empty entries to it
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer.weight.grad = c.signs["fc"] * 10.0
    opt.step()
    assert int(c.project(opt)["fc"]) == layer.weight.numel()
    assert len(opt.state) == 0
    # a weight the optimiser does not hold is skipped as well
    other = torch.optim.SGD([layer.bias], lr=0.1, momentum=0.9)
    c.project(other)
    assert layer.weight not in other.state


def test_make_constraint_passes_reset_momentum():
    assert ConstraintConfig().reset_momentum is False
    net = Net()
    c = make_constraint(ConstraintConfig(sign="synapse", reset_momentum=True), net, gen())
    assert c.reset_momentum is True
    assert "reset_momentum=True" in repr(c)
    assert make_constraint(ConstraintConfig(sign="synapse"), Net(), gen()).reset_momentum is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_counts_and_reset_on_cuda_without_host_sync():
    layer = Linear(6, 5)
    c = SignConstraint({"fc": layer}, "synapse", 0.5, gen(), reset_momentum=True)
    layer.cuda()  # masks and signs follow the model
    s = c.signs["fc"].cuda()
    opt = torch.optim.SGD([layer.weight], lr=1.0, momentum=0.9)
    layer.weight.grad = s * 5.0
    opt.step()
    k = c.project(opt)["fc"]  # the first one moves the masks to the device
    assert k.crossed.device.type == "cuda" and k.pushed.device.type == "cuda"
    assert (int(k.crossed), int(k.pushed)) == (30, 0)
    assert bool((opt.state[layer.weight]["momentum_buffer"] == 0).all())
    opt.step()  # the gradient alone pushes the pinned weights again
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the projection raises
    try:
        counts = c.project(opt)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert (int(counts["fc"].crossed), int(counts["fc"].pushed)) == (0, 30)
