"""Gradients of the feedback Linear layer against independent computations, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynalign.feedback import Linear, exact_gradients, feedback_layers
from dynalign.models.mlp import MLP
from dynalign.rules import attach_rule, make_rule


@pytest.fixture(autouse=True)
def float64():
    """Every tensor in this module is float64; restored afterwards for the other modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _two_layer(rule, seed=0):
    torch.manual_seed(seed)
    net = MLP(5, 3, depth=1, width=7, activation="tanh")
    attach_rule(net, rule, torch.Generator().manual_seed(seed + 1))
    return net.double()


def test_bp_linear_matches_autograd_exactly():
    torch.manual_seed(0)
    layer = Linear(6, 4).double()
    x = torch.randn(9, 6, requires_grad=True)
    y = torch.tanh(layer(x)).sum()
    gx, gw, gb = torch.autograd.grad(y, (x, layer.weight, layer.bias))
    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    b2 = layer.bias.detach().clone().requires_grad_()
    y2 = torch.tanh(F.linear(x2, w2, b2)).sum()
    ex, ew, eb = torch.autograd.grad(y2, (x2, w2, b2))
    assert torch.equal(gx, ex) or torch.allclose(gx, ex, rtol=0, atol=1e-15)
    assert torch.allclose(gw, ew, rtol=0, atol=1e-15)
    assert torch.allclose(gb, eb, rtol=0, atol=1e-15)


def test_bp_layer_uses_torchs_own_backward_unless_captured_or_given_b():
    """Plain backprop through W takes torch's backward (no Python per layer); a pass captured
    for probes, a layer with B and one with a route of the rule's keep the rule's function,
    and the gradients agree either way."""
    torch.manual_seed(0)
    layer = Linear(6, 4).double()
    x = torch.randn(9, 6)

    def run():
        out = layer(x)
        grads = torch.autograd.grad(torch.tanh(out).sum(), (layer.weight, layer.bias))
        return type(out.grad_fn).__name__, grads

    native, (gw, gb) = run()
    assert "LinearFn" not in native
    layer.capturing = True
    captured, (cw, cb) = run()
    layer.release_captured()
    assert "LinearFn" in captured
    torch.testing.assert_close((cw, cb), (gw, gb), rtol=1e-13, atol=0)
    layer.route = lambda *args: None
    assert "LinearFn" in run()[0]
    layer.route, layer.feedback = None, torch.randn(4, 6)
    assert "LinearFn" in run()[0]


def test_bp_linear_gradcheck():
    from dynalign.feedback import _LinearFn

    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(2, 3, requires_grad=True)
    b = torch.randn(2, requires_grad=True)
    layer = Linear(3, 2)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _LinearFn.apply(x, w, b, None, layer), (x, w, b)
    )


def test_fa_with_b_equal_w_matches_autograd():
    net = _two_layer(make_rule("fa"))
    for layer in feedback_layers(net).values():
        layer.feedback = layer.weight.detach().clone()
    ref = _two_layer(make_rule("bp"))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    g_fa = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    g_bp = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    for a, b in zip(g_fa, g_bp, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)


def test_fa_weight_gradient_closed_form():
    """Two-layer net: grad W1 = ((B2ᵀ e) ⊙ f'(a1)) xᵀ with e the output error."""
    net = _two_layer(make_rule("fa"))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    loss = F.cross_entropy(net(x), y, reduction="sum")
    g_w1, g_w2 = torch.autograd.grad(loss, [net.fc1.weight, net.fc2.weight])
    with torch.no_grad():
        a1 = x @ net.fc1.weight.T + net.fc1.bias
        h1 = torch.tanh(a1)
        out = h1 @ net.fc2.weight.T + net.fc2.bias
        e = torch.softmax(out, 1) - F.one_hot(y, 3)  # dL/d out for summed cross-entropy
        delta1 = (e @ net.fc2.feedback) * (1 - h1**2)  # (Bᵀ e) ⊙ f'(a1), batch as rows
        expected_w1 = delta1.T @ x
        expected_w2 = e.T @ h1
    assert torch.allclose(g_w1, expected_w1, atol=1e-12)
    assert torch.allclose(g_w2, expected_w2, atol=1e-12)
    ref = _bp_copy(net)
    bp_w1 = torch.autograd.grad(F.cross_entropy(ref(x), y, reduction="sum"), ref.fc1.weight)[0]
    assert not torch.allclose(g_w1, bp_w1)


def _bp_copy(net):
    ref = _two_layer(make_rule("bp"))
    ref.load_state_dict(
        {k: v for k, v in net.state_dict().items() if "feedback" not in k}, strict=False
    )
    return ref


def test_exact_gradients_switch_gives_bp_on_same_graph():
    net = _two_layer(make_rule("fa"))
    ref = _bp_copy(net)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    loss = F.cross_entropy(net(x), y)
    params = list(net.parameters())
    rule = torch.autograd.grad(loss, params, retain_graph=True)
    with exact_gradients():
        exact = torch.autograd.grad(loss, params)
    truth = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    for a, b in zip(exact, truth, strict=True):
        assert torch.allclose(a, b, atol=1e-14)
    assert not torch.allclose(rule[0], truth[0])  # fc1 weight differs under FA
    assert torch.allclose(rule[2], truth[2])  # the output layer's update is exact


def test_fa_feedback_matches_forward_init_distribution():
    torch.manual_seed(0)
    layer = Linear(400, 300)
    attach_rule(layer, make_rule("fa"), torch.Generator().manual_seed(1))
    bound = 1 / 400**0.5
    b = layer.feedback
    assert b.shape == layer.weight.shape
    assert b.abs().max() <= bound and b.abs().max() > 0.99 * bound
    assert abs(b.std().item() - layer.weight.std().item()) < 0.02 * bound
    assert not any(b is p for p in layer.parameters())
    scaled = Linear(400, 300)
    attach_rule(
        scaled, make_rule("fa", distribution="normal", scale=2.0), torch.Generator().manual_seed(1)
    )
    assert abs(scaled.feedback.std().item() - 2 * bound / 3**0.5) < 0.03 * bound


def test_make_rule_rejects_unknown():
    with pytest.raises(ValueError, match="unknown rule"):
        make_rule("nope")
