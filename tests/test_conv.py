"""Conv2d feedback layer and ConvNet: gradients checked against plain torch autograd (float64)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynalign.config import Config
from dynalign.conv import Conv2d, _Conv2dFn
from dynalign.feedback import exact_gradients, feedback_layers
from dynalign.models import build
from dynalign.models.convnet import ConvNet
from dynalign.rules import attach_rule, make_rule

# (stride, padding, (H, W), output_padding that conv_transpose2d needs to restore (H, W))
GEOMETRIES = [
    (1, 0, (7, 6), (0, 0)),
    (1, 1, (7, 6), (0, 0)),
    (2, 0, (9, 7), (0, 0)),
    (2, 1, (9, 7), (0, 0)),
    (2, 0, (8, 8), (1, 1)),
    (2, 1, (8, 8), (1, 1)),
]


def _layer(stride: int, padding: int, seed: int = 0) -> Conv2d:
    torch.manual_seed(seed)
    return Conv2d(2, 3, 3, stride=stride, padding=padding).double()


def _input(size: tuple[int, int], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 2, *size, generator=g, dtype=torch.float64, requires_grad=True)


def _reference_grads(layer: Conv2d, x: torch.Tensor, grad_out: torch.Tensor):
    """Gradients of a plain F.conv2d with the layer's W and b (true backpropagation)."""
    x0 = x.detach().clone().requires_grad_()
    w0 = layer.weight.detach().clone().requires_grad_()
    b0 = layer.bias.detach().clone().requires_grad_()
    out = F.conv2d(x0, w0, b0, layer.stride, layer.padding)
    return out, torch.autograd.grad(out, (x0, w0, b0), grad_out)


def _attach_fa(layer: Conv2d, seed: int = 7) -> None:
    attach_rule(layer, make_rule("fa"), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("stride,padding,size,_", GEOMETRIES)
def test_bp_matches_autograd(stride, padding, size, _):
    layer, x = _layer(stride, padding), _input(size)
    out = layer(x)
    grad_out = torch.randn_like(out)
    ref_out, ref = _reference_grads(layer, x, grad_out)
    got = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad_out)
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("stride,padding,size,_", GEOMETRIES)
def test_exact_gradients_use_w_even_with_feedback(stride, padding, size, _):
    layer, x = _layer(stride, padding), _input(size)
    _attach_fa(layer)
    out = layer(x)
    grad_out = torch.randn_like(out)
    _, ref = _reference_grads(layer, x, grad_out)
    with exact_gradients():
        got = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad_out)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("stride,padding,size,output_padding", GEOMETRIES)
def test_fa_sends_error_through_feedback(stride, padding, size, output_padding):
    layer, x = _layer(stride, padding), _input(size)
    _attach_fa(layer)
    out = layer(x)
    grad_out = torch.randn_like(out)
    grad_x, grad_w, grad_b = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad_out)
    expected_x = F.conv_transpose2d(
        grad_out, layer.feedback, stride=stride, padding=padding, output_padding=output_padding
    )
    torch.testing.assert_close(grad_x, expected_x)
    _, (true_x, true_w, true_b) = _reference_grads(layer, x, grad_out)
    assert not torch.allclose(grad_x, true_x)  # B really replaced W
    torch.testing.assert_close(grad_w, true_w)  # the update is local, whatever the rule
    torch.testing.assert_close(grad_b, true_b)


def test_fa_error_reaches_the_layer_below_through_feedback():
    """In conv1 -> tanh -> conv2, conv1's update is the local rule fed by conv2's B."""
    torch.manual_seed(3)
    conv1, conv2 = Conv2d(2, 3, 3, padding=1).double(), Conv2d(3, 2, 3, padding=1).double()
    _attach_fa(conv2)
    x = _input((6, 5))
    h = torch.tanh(conv1(x))
    out = conv2(h)
    grad_out = torch.randn_like(out)
    (grad_w1,) = torch.autograd.grad(out, (conv1.weight,), grad_out)

    x0 = x.detach()
    w1 = conv1.weight.detach().clone().requires_grad_()
    pre = F.conv2d(x0, w1, conv1.bias.detach(), padding=1)
    delta = F.conv_transpose2d(grad_out, conv2.feedback, padding=1) * (1 - torch.tanh(pre) ** 2)
    (expected,) = torch.autograd.grad(pre, (w1,), delta)
    torch.testing.assert_close(grad_w1, expected)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_gradcheck_without_feedback(stride, padding):
    layer, x = _layer(stride, padding), _input((5, 5))
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w, b: _Conv2dFn.apply(x, w, b, None, layer), (x, w, b)
    )


def test_only_requested_gradients_are_computed():
    layer, x = _layer(1, 1), _input((5, 5)).detach()
    layer.bias.requires_grad_(False)
    out = layer(x)
    out.sum().backward()
    assert x.grad is None and layer.bias.grad is None
    assert layer.weight.grad is not None


def test_no_grad_forward_matches_and_is_captured():
    layer, x = _layer(2, 1), _input((7, 7)).detach()
    layer.capturing = True
    with_grad = layer(x)
    with torch.no_grad():
        without_grad = layer(x)
    torch.testing.assert_close(with_grad, without_grad)
    assert len(layer.captured) == 2 and layer.captured[0] is with_grad


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_feature_maps_run_channels_last_on_the_cpu_and_w_keeps_its_layout(rule):
    """The activations take the layout the CPU's kernels run fastest in; W's gradient keeps
    W's own layout, which the compiled optimiser's pass needs (it declines any other), under
    the rule and inside exact_gradients() alike."""
    layer, x = _layer(1, 1), _input((6, 6))
    if rule == "fa":
        _attach_fa(layer)
    layer.capturing = True  # a probed step: the rule's autograd function, also under BP
    for exact in (False, True):
        out = layer(x)
        assert out.is_contiguous(memory_format=torch.channels_last)
        with exact_gradients() if exact else contextlib.nullcontext():
            grad_w, grad_x = torch.autograd.grad(out.square().sum(), (layer.weight, x))
        assert grad_w.is_contiguous() and grad_w.shape == layer.weight.shape
        _, (_, true_w, _) = _reference_grads(layer, x, 2 * out.detach())
        torch.testing.assert_close(grad_w, true_w)


def test_fa_rule_draws_feedback_like_the_weights():
    layer = _layer(1, 0)
    _attach_fa(layer)
    assert layer.feedback.shape == layer.weight.shape
    assert layer.feedback.abs().max() <= layer.init_bound()
    assert layer.init_bound() == pytest.approx(1 / (2 * 3 * 3) ** 0.5)
    assert layer.weight.abs().max() <= layer.init_bound()


def test_bad_input_shape_is_a_clear_error():
    layer = _layer(1, 0)
    with pytest.raises(ValueError, match="expects input of shape"):
        layer(torch.zeros(2, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2d(2, 3, 0)


# --- ConvNet ---------------------------------------------------------------------------------


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 32, 32)])
def test_convnet_shapes_and_layer_names(input_shape):
    torch.manual_seed(0)
    net = ConvNet(input_shape, 10, [4, 6], 3, "relu", "standard", 0.1, 0.5, None)
    x = torch.randn(3, *input_shape)
    assert net(x).shape == (3, 10)
    assert list(feedback_layers(net)) == ["conv1", "conv2", "fc"]
    assert net.fc.in_features == 6 * (input_shape[1] // 4) * (input_shape[2] // 4)
    flat = net(x.reshape(3, -1))
    torch.testing.assert_close(flat, net(x))


def test_convnet_even_kernel_and_two_dim_input_shape():
    net = ConvNet((8, 8), 5, [2], 2, "tanh", "none", 0.1, 0.5, None)
    # kernel 2, padding 1: 8 -> 9 -> pool -> 4
    assert net.fc.in_features == 2 * 4 * 4
    assert net(torch.randn(2, 64)).shape == (2, 5)


def test_convnet_too_many_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer channel blocks"):
        ConvNet((1, 8, 8), 10, [2, 2, 2, 2], 3, "relu", "none", 0.1, 0.5, None)
    net = ConvNet((1, 8, 8), 10, [2, 2, 2], 3, "relu", "none", 0.1, 0.5, None)
    with pytest.raises(ValueError, match="ConvNet expects input"):
        net(torch.zeros(2, 3, 8, 8))


def _plain_copy(net: ConvNet, batch_norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in (1, 2):
        conv: Conv2d = getattr(net, f"conv{i}")
        plain = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding
        )
        plain.weight.data.copy_(conv.weight.data)
        plain.bias.data.copy_(conv.bias.data)
        layers.append(plain)
        if batch_norm == "standard":
            bn = nn.BatchNorm2d(conv.out_channels, momentum=0.2)
            bn.weight.data.copy_(getattr(net, f"bn{i}").weight.data)
            bn.bias.data.copy_(getattr(net, f"bn{i}").bias.data)
            layers.append(bn)
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    fc = nn.Linear(net.fc.in_features, net.fc.out_features)
    fc.weight.data.copy_(net.fc.weight.data)
    fc.bias.data.copy_(net.fc.bias.data)
    return nn.Sequential(*layers, nn.Flatten(), fc).double()


@pytest.mark.parametrize("batch_norm", ["none", "standard"])
@pytest.mark.parametrize("rule", ["bp", "fa-exact"])
def test_convnet_gradients_match_plain_torch(batch_norm, rule):
    torch.manual_seed(4)
    net = ConvNet((2, 8, 8), 3, [3, 4], 3, "relu", batch_norm, 0.2, 0.5, None).double()
    if batch_norm == "standard":  # non-trivial gamma and beta
        for bn in (net.bn1, net.bn2):
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)
    if rule == "fa-exact":
        attach_rule(net, make_rule("fa"), torch.Generator().manual_seed(0))
    plain = _plain_copy(net, batch_norm)
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])

    loss = net.loss_terms(net(x), x, y)["loss"]
    params = [
        net.conv1.weight,
        net.conv1.bias,
        net.conv2.weight,
        net.conv2.bias,
        net.fc.weight,
        net.fc.bias,
    ]
    if rule == "fa-exact":
        with exact_gradients():
            got = torch.autograd.grad(loss, params)
    else:
        got = torch.autograd.grad(loss, params)

    plain_loss = F.cross_entropy(plain(x), y)
    plain_params = [
        p for m in plain if isinstance(m, (nn.Conv2d, nn.Linear)) for p in (m.weight, m.bias)
    ]
    expected = torch.autograd.grad(plain_loss, plain_params)
    torch.testing.assert_close(loss, plain_loss)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_convnet_fa_update_differs_from_bp_below_the_top():
    torch.manual_seed(5)
    net = ConvNet((1, 8, 8), 3, [2, 3], 3, "relu", "none", 0.1, 0.5, None).double()
    attach_rule(net, make_rule("fa"), torch.Generator().manual_seed(1))
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    loss = net.loss_terms(net(x), x, torch.tensor([0, 1, 2, 0]))["loss"]
    params = (net.conv1.weight, net.fc.weight)
    fa = torch.autograd.grad(loss, params, retain_graph=True)
    with exact_gradients():
        bp = torch.autograd.grad(loss, params)
    torch.testing.assert_close(fa[1], bp[1])  # the read-out's update is local
    assert not torch.allclose(fa[0], bp[0])  # conv1 hears the error through B


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_relu_runs_after_the_pool_with_the_same_values_and_gradients_bitwise(rule):
    """relu(max_pool(z)) = max_pool(relu(z)): the ConvNet pools first (a quarter of the values
    for the ReLU), and its loss and every gradient are bitwise those of the order as named,
    on batches with windows that hold no positive value (zero gradient) and windows that do."""
    torch.manual_seed(6)
    net = ConvNet((3, 12, 12), 4, [4, 6], 3, "relu", "none", 0.1, 0.5, None)
    if rule == "fa":
        attach_rule(net, make_rule("fa"), torch.Generator().manual_seed(2))
    assert net.block_names == ["conv1", "pool1", "act1", "conv2", "pool2", "act2"]
    as_named = [name for name, _ in net.named_children() if name != "fc"]
    assert as_named == ["conv1", "act1", "pool1", "conv2", "act2", "pool2"]
    x, y = torch.randn(8, 3, 12, 12), torch.randint(0, 4, (8,))
    pooled = torch.nn.functional.max_pool2d(net.conv1(x), 2)
    assert (pooled <= 0).any() and (pooled > 0).any()

    def run(order: list[str]):
        net.block_names = order
        loss = net.loss_terms(net(x), x, y)["loss"]
        return [loss, *torch.autograd.grad(loss, list(net.parameters()))]

    for fast, named in zip(run(list(net.block_names)), run(as_named), strict=True):
        assert torch.equal(fast, named)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "mixed_relu"])
def test_other_activations_keep_the_order_as_named(activation):
    net = ConvNet((1, 8, 8), 3, [2, 3], 3, activation, "standard", 0.1, 0.5, None)
    assert net.block_names == [name for name, _ in net.named_children() if name != "fc"]


def test_build_dispatches_to_convnet():
    config = Config()
    config.model.kind, config.model.channels = "convnet", [2, 3]
    config.model.batch_norm = "running_incl"
    net = build(config, (1, 8, 8), 10, torch.Generator().manual_seed(0))
    assert isinstance(net, ConvNet) and hasattr(net, "bn2")
    assert net(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_convnet_mixed_relu_signs_are_per_channel():
    pytest.importorskip("dynalign.activations")
    net = ConvNet(
        (1, 8, 8), 3, [6], 3, "mixed_relu", "none", 0.1, 0.5, torch.Generator().manual_seed(0)
    )
    seen = {}
    net.act1.register_forward_hook(lambda m, i, o: seen.update(out=o))
    net(torch.randn(4, 1, 8, 8))
    per_channel = seen["out"].transpose(0, 1).reshape(6, -1)
    nonneg = (per_channel >= 0).all(1)
    nonpos = (per_channel <= 0).all(1)
    assert bool((nonneg | nonpos).all())
    assert bool((nonneg & ~nonpos).any()) and bool((nonpos & ~nonneg).any())
