"""The learning rules beyond BP and FA (dfa, usf, brsf, frsf, kp, wm) and the head-only control
(frozen), each checked by a computation of its own:

1. one backward pass of a small tanh MLP and of a small ConvNet against the update derived by
   hand in float64 (FA-like: δ_l = (δ_{l+1} B_{l+1}) ⊙ f'(a_l); DFA: δ_l = (e B_{l+1}) ⊙ f'(a_l)
   with e the output error; frozen: zero for every hidden layer), grad W_l = δ_lᵀ x_l;
2. what each rule keeps true over training: sign(B) = sign(W) (sign symmetry, with and without
   Dale's law), B - W shrinking by (1 - lr·wd) every step (Kolen-Pollack) until B and W align on
   digits, B learning a fixed W from noise (weight mirror), hidden layers left bitwise alone
   (frozen);
3. every rule learns the embedded digits, and beats the frozen control on the same seed;
4. a run stopped and resumed equals the unbroken run, array for array, for the rules that carry
   their own generators or buffers (brsf, frsf, kp, wm).
"""

from __future__ import annotations

import math
import time
import warnings
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from synthetic_stores import store_arrays
from torch import nn

from dynalign import checkpoint, open_run
from dynalign.config import ConfigError, build_config
from dynalign.conv import Conv2d
from dynalign.feedback import Linear, feedback_layers
from dynalign.reader import check_store
from dynalign.record import prepare, record, resume
from dynalign.rules import attach_rule, kolen_pollack, make_rule
from dynalign.store import RunWriter, StoreError
from dynalign.trainer import Trainer

RULES = ("dfa", "usf", "brsf", "frsf", "kp", "wm", "frozen")
SIGN_RULES = ("usf", "brsf", "frsf")
#: rules whose hidden layers' error comes down layer by layer through a B shaped like W
THROUGH_B = ("usf", "brsf", "frsf", "kp", "wm")
N_OUT = 3


@pytest.fixture
def float64():
    """Tensors made in the test are float64; restored afterwards for the other tests."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    cos = float(a @ b / (a.norm() * b.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


# --------------------------------------------------------------- 1. closed-form gradients


def _mlp(rule: str, seed: int = 0):
    """5 -> 7 -> 6 -> 3 with tanh (unequal widths: a transposed B cannot pass), its rule."""
    torch.manual_seed(seed)
    net = nn.Sequential(Linear(5, 7), nn.Tanh(), Linear(7, 6), nn.Tanh(), Linear(6, N_OUT))
    rule_object = make_rule(rule, seed)
    attach_rule(net, rule_object, torch.Generator().manual_seed(seed + 1), (5,))
    return net, rule_object


def _convnet(rule: str, seed: int = 0):
    """(2, 6, 6) -> conv 3x3 pad 1 -> tanh -> conv 3x3 stride 2 pad 1 -> tanh -> linear."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        Conv2d(2, 3, 3, padding=1),
        nn.Tanh(),
        Conv2d(3, 4, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        Linear(4 * 3 * 3, N_OUT),
    )
    rule_object = make_rule(rule, seed)
    attach_rule(net, rule_object, torch.Generator().manual_seed(seed + 1), (2, 6, 6))
    return net, rule_object


def _advance(net: nn.Module, rule, shape: tuple[int, ...], steps: int) -> None:
    """A few SGD steps (momentum, weight decay) with the rule's after_step, so that B has moved
    from its initial value where the rule moves it (brsf's M redrawn, KP decayed, WM mirrored)."""
    optimizer = torch.optim.SGD(rule.trainable(net), lr=0.1, momentum=0.9, weight_decay=0.01)
    g = torch.Generator().manual_seed(11)
    for _ in range(steps):
        x = torch.randn(8, *shape, generator=g)
        y = torch.randint(0, N_OUT, (8,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        rule.after_step(feedback_layers(net), optimizer)


def _output_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dL/d out of the summed cross-entropy: softmax minus the one-hot target."""
    return torch.softmax(out, 1) - F.one_hot(y, N_OUT)


def _rule_grads(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    loss = F.cross_entropy(net(x), y, reduction="sum")
    return list(torch.autograd.grad(loss, list(net.parameters())))


def _bp_grads(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The true gradient of the MLP's weights, from plain torch functions."""
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]
    h = x
    for i in range(0, len(params) - 2, 2):
        h = torch.tanh(F.linear(h, params[i], params[i + 1]))
    loss = F.cross_entropy(F.linear(h, params[-2], params[-1]), y, reduction="sum")
    return list(torch.autograd.grad(loss, params))


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _check_feedback(net: nn.Module, rule: str) -> None:
    """B at this moment is what the rule says it is, built from W (or not) as it should be."""
    layers = list(feedback_layers(net).values())
    readout = layers[-1]
    for layer in layers:
        w, b = layer.weight.detach(), layer.feedback
        assert b is not None or (rule == "frozen" and layer is not readout)
        bound = 1 / math.sqrt(w[0].numel())
        if rule == "usf":
            assert torch.equal(b, torch.sign(w) * (bound / math.sqrt(3)))
        elif rule == "frsf":
            assert (layer.feedback_magnitude >= 0).all()
            assert torch.equal(b, torch.sign(w) * layer.feedback_magnitude)
        elif rule == "brsf":
            assert torch.equal(torch.sign(b), torch.sign(w))
            assert 0 < b.abs().min() and b.abs().max() <= bound
        elif rule in ("kp", "wm"):
            assert b.shape == w.shape
            assert _angle(w, b) > 45  # random at first, and still far from W
            if rule == "kp":  # B = W + D, to rounding (at init D is B - W)
                torch.testing.assert_close(b, w + kolen_pollack.offset(layer), rtol=0, atol=1e-15)
        elif rule == "dfa":
            if layer is readout:
                assert b.shape == w.shape
            else:  # (outputs, *the layer's input); the exact shapes are checked by the tests
                assert b.shape[0] == N_OUT and b.shape[1] == w.shape[1]
        elif rule == "frozen" and layer is readout:
            assert b.shape == w.shape and not b.any()
    if rule == "frozen":
        assert _same(make_rule(rule).trainable(net), list(readout.parameters()))
    else:
        assert _same(make_rule(rule).trainable(net), list(net.parameters()))


@torch.no_grad()
def _expected_mlp(net: nn.Sequential, rule: str, x: torch.Tensor, y: torch.Tensor):
    l1, l2, l3 = net[0], net[2], net[4]
    h1 = torch.tanh(x @ l1.weight.T + l1.bias)
    h2 = torch.tanh(h1 @ l2.weight.T + l2.bias)
    e = _output_error(h2 @ l3.weight.T + l3.bias, y)
    if rule == "frozen":
        d2, d1 = torch.zeros_like(h2), torch.zeros_like(h1)
    elif rule == "dfa":  # each hidden layer hears e through the B of the layer it feeds
        d2 = (e @ l3.feedback) * (1 - h2**2)
        d1 = (e @ l2.feedback) * (1 - h1**2)
    else:
        d2 = (e @ l3.feedback) * (1 - h2**2)
        d1 = (d2 @ l2.feedback) * (1 - h1**2)
    return [d1.T @ x, d1.sum(0), d2.T @ h1, d2.sum(0), e.T @ h2, e.sum(0)]


@pytest.mark.parametrize("steps", [0, 3], ids=["at-init", "after-3-steps"])
@pytest.mark.parametrize("rule", RULES)
def test_mlp_gradient_matches_closed_form(rule, steps, float64):
    net, rule_object = _mlp(rule)
    _advance(net, rule_object, (5,), steps)
    _check_feedback(net, rule)
    if rule == "dfa":
        shapes = [tuple(layer.feedback.shape) for layer in (net[0], net[2], net[4])]
        assert shapes == [(N_OUT, 5), (N_OUT, 7), (N_OUT, 6)]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 5, generator=g)
    y = torch.randint(0, N_OUT, (8,), generator=g)
    got = _rule_grads(net, x, y)
    expected = _expected_mlp(net, rule, x, y)
    for name, a, b in zip(("W1", "b1", "W2", "b2", "W3", "b3"), got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13, msg=f"{rule}: {name}")
    bp = _bp_grads(net, x, y)
    torch.testing.assert_close(got[4], bp[4], rtol=0, atol=1e-13)  # the read-out is exact
    if rule == "frozen":
        assert not any(t.any() for t in got[:4])
    else:
        assert not torch.allclose(got[0], bp[0])  # B really replaced W below the read-out
    if rule == "dfa":  # the first layer's B would reach the input only: it changes nothing
        net[0].feedback.normal_()
        for a, b in zip(_rule_grads(net, x, y), got, strict=True):
            assert torch.equal(a, b)


def _conv_weight_grad(x: torch.Tensor, delta: torch.Tensor, layer: Conv2d) -> torch.Tensor:
    """Σ over samples and positions of δ times the input patch it saw (im2col by F.unfold)."""
    cols = F.unfold(x, layer.kernel_size, padding=layer.padding, stride=layer.stride)
    return torch.einsum("nol,ncl->oc", delta.flatten(2), cols).reshape(layer.weight.shape)


@torch.no_grad()
def _expected_conv(net: nn.Sequential, rule: str, x: torch.Tensor, y: torch.Tensor):
    c1, c2, fc = net[0], net[2], net[5]
    h1 = torch.tanh(F.conv2d(x, c1.weight, c1.bias, padding=1))
    h2 = torch.tanh(F.conv2d(h1, c2.weight, c2.bias, stride=2, padding=1))
    features = h2.flatten(1)
    e = _output_error(features @ fc.weight.T + fc.bias, y)
    if rule == "frozen":
        d2, d1 = torch.zeros_like(h2), torch.zeros_like(h1)
    else:
        d2 = (e @ fc.feedback).reshape(h2.shape) * (1 - h2**2)
        if rule == "dfa":
            d1 = (e @ c2.feedback.reshape(N_OUT, -1)).reshape(h1.shape) * (1 - h1**2)
        else:  # 6x6 -> 3x3 at stride 2: output_padding 1 restores 6x6
            back = F.conv_transpose2d(d2, c2.feedback, stride=2, padding=1, output_padding=1)
            d1 = back * (1 - h1**2)
    return [
        _conv_weight_grad(x, d1, c1),
        d1.sum((0, 2, 3)),
        _conv_weight_grad(h1, d2, c2),
        d2.sum((0, 2, 3)),
        e.T @ features,
        e.sum(0),
    ]


@pytest.mark.parametrize("steps", [0, 3], ids=["at-init", "after-3-steps"])
@pytest.mark.parametrize("rule", RULES)
def test_conv_gradient_matches_closed_form(rule, steps, float64):
    net, rule_object = _convnet(rule)
    _advance(net, rule_object, (2, 6, 6), steps)
    _check_feedback(net, rule)
    if rule == "dfa":
        shapes = [tuple(net[i].feedback.shape) for i in (0, 2, 5)]
        assert shapes == [(N_OUT, 2, 6, 6), (N_OUT, 3, 6, 6), (N_OUT, 36)]
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 2, 6, 6, generator=g)
    y = torch.randint(0, N_OUT, (4,), generator=g)
    got = _rule_grads(net, x, y)
    expected = _expected_conv(net, rule, x, y)
    for name, a, b in zip(("W1", "b1", "W2", "b2", "W3", "b3"), got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13, msg=f"{rule}: {name}")
    if rule == "frozen":
        assert not any(t.any() for t in got[:4])
    else:
        assert got[0].abs().max() > 1e-3  # an update that the comparison can tell apart


# ------------------------------------------------------------------------ 2. invariants


def _config(rule: str, **overrides):
    """A small MLP on 300 digits: a step takes about a millisecond."""
    base = {
        "rule.name": rule,
        "model.depth": 2,
        "model.width": 32,
        "data.n_train": 300,
        "data.n_val": 100,
        "train.batch_size": 30,
        "train.threads": 1,
    }
    return build_config(overrides={**base, **overrides})


def _trainer(rule: str, **overrides) -> Trainer:
    """The run's own trainer (model, rule, constraint as ``record`` builds them), no store."""
    config = _config(rule, **overrides)
    data, model, constraint, rule_object = prepare(config)
    return Trainer(config, data, model, rule_object, None, constraint, progress=False)


def _train(trainer: Trainer, steps: int, seed: int = 0):
    """Yield after each of ``steps`` training steps on random minibatches."""
    g = torch.Generator().manual_seed(seed)
    x, y = trainer.data.x_train, trainer.data.y_train
    for _ in range(steps):
        idx = torch.randint(0, len(x), (trainer.config.train.batch_size,), generator=g)
        trainer.train_batch(x[idx], y[idx])
        yield trainer.step


@pytest.mark.parametrize("sign", ["none", "synapse"])
@pytest.mark.parametrize("rule", [*SIGN_RULES, "brsf-normal"])
def test_sign_symmetry_holds_after_every_step(rule, sign):
    """sign(B) = sign(W) after every step (0 where Dale's law pinned W at 0); usf's |B| is one
    number per layer, frsf's is its fixed M, brsf's is redrawn every step (from the hash, or
    half-normal from torch's generator)."""
    rule, _, distribution = rule.partition("-")
    extra = {"rule.distribution": distribution} if distribution else {}
    trainer = _trainer(rule, **{"constraint.sign": sign}, **extra)
    layers = trainer.layers
    fixed = {n: layer.feedback_magnitude.clone() for n, layer in layers.items() if rule == "frsf"}

    def check() -> dict[str, torch.Tensor]:
        for name, layer in layers.items():
            w, b = layer.weight.detach(), layer.feedback
            assert torch.equal(torch.sign(b), torch.sign(w)), (rule, name, trainer.step)
            if rule == "usf":
                scale = 1 / math.sqrt(3 * w.shape[1])
                assert torch.equal(b.abs(), (w != 0) * torch.tensor(scale, dtype=w.dtype))
            if rule == "frsf":
                assert torch.equal(layer.feedback_magnitude, fixed[name])  # M never changes
                assert torch.equal(b.abs(), (w != 0) * fixed[name])
        return {n: layer.feedback.abs().clone() for n, layer in layers.items()}

    previous = check()
    zeros = 0
    for _ in _train(trainer, 30):
        magnitudes = check()
        if rule == "brsf":  # a fresh M at every step: hardly an entry keeps its size
            for name, m in magnitudes.items():
                live = (m != 0) & (previous[name] != 0)
                assert (m[live] == previous[name][live]).float().mean() < 0.01, name
        previous = magnitudes
        zeros += sum(int((layer.weight == 0).sum()) for layer in layers.values())
    if sign == "synapse":
        assert zeros > 0  # the constraint pinned weights at 0, and B followed them there
    else:
        assert zeros == 0


def _net_and_sgd(rule: str, momentum: float, decay: float, lr: float = 0.05):
    net, _ = _mlp(rule)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=decay)
    return net, optimizer, feedback_layers(net)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_kolen_pollack_trains_b_as_w_is_trained(momentum, float64):
    """B equals a twin of it trained by its own SGD (same lr, momentum and weight decay) on W's
    gradient: KP's "B receives the same update as W, and both decay". Without momentum B - W
    shrinks by (1 - lr·wd) a step, and ΔB = -lr·(G + wd·B)."""
    lr, decay = 0.05, 0.1
    net, optimizer, layers = _net_and_sgd("kp", momentum, decay, lr)
    rule = make_rule("kp")
    twins = {n: layer.feedback.clone().requires_grad_() for n, layer in layers.items()}
    twin_sgd = torch.optim.SGD(twins.values(), lr=lr, momentum=momentum, weight_decay=decay)
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        x, y = torch.randn(16, 5, generator=g), torch.randint(0, N_OUT, (16,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        offsets = {n: kolen_pollack.offset(layer) for n, layer in layers.items()}
        for name, layer in layers.items():
            twins[name].grad = layer.weight.grad.clone()
        optimizer.step()
        twin_sgd.step()
        rule.after_step(layers, optimizer)
        for name, layer in layers.items():
            torch.testing.assert_close(layer.feedback, twins[name].detach(), rtol=0, atol=1e-13)
            d = kolen_pollack.offset(layer)
            torch.testing.assert_close(
                layer.feedback, layer.weight.detach() + d, rtol=0, atol=1e-15
            )
            if momentum == 0:
                torch.testing.assert_close(d, offsets[name] * (1 - lr * decay), rtol=1e-15, atol=0)
    angles = [_angle(layer.weight, layer.feedback) for layer in layers.values()]
    assert all(a > 30 for a in angles)  # ten steps: still far from aligned


def test_kolen_pollack_in_the_trainer():
    """Through the trainer (float32, momentum 0.9): B follows its twin trained by SGD on W's
    gradient, every step."""
    lr, decay = 0.05, 0.02
    trainer = _trainer("kp", **{"train.lr": lr, "train.weight_decay": decay})
    layers = trainer.layers
    momentum = trainer.config.train.momentum
    assert momentum == 0.9
    twins = {n: layer.feedback.clone().requires_grad_() for n, layer in layers.items()}
    twin_sgd = torch.optim.SGD(twins.values(), lr=lr, momentum=momentum, weight_decay=decay)
    for _ in _train(trainer, 20):
        for name, layer in layers.items():
            twins[name].grad = layer.weight.grad.clone()
        twin_sgd.step()
        for name, layer in layers.items():
            scale = float(layer.weight.detach().abs().max())
            torch.testing.assert_close(
                layer.feedback, twins[name].detach(), rtol=0, atol=64 * 1.2e-7 * scale
            )


def test_configs_a_rule_cannot_run_are_refused():
    """KP without weight decay (B - W would never shrink), DFA on the RNN."""
    with pytest.raises(ConfigError, match="train.weight_decay > 0"):
        build_config(overrides={"rule.name": "kp"})
    with pytest.raises(ConfigError, match="not defined for the rnn"):
        build_config(
            overrides={"rule.name": "dfa", "model.kind": "rnn", "data.name": "text"},
        )


#: Kolen-Pollack on digits: B - W shrinks by (1 - lr·wd) per step, so lr·wd·steps sets how far
#: B comes to W: 0.1 · 0.025 · 30 epochs · 41 steps = 3.1, exp(-3.1) = 4.5% of the initial
#: difference. Without momentum, W's own decay is the same lr·wd per step, not 10 times more.
KP_DIGITS = {
    "rule.name": "kp",
    "model.depth": 2,
    "model.width": 64,
    "train.epochs": 30,
    "train.batch_size": 32,
    "train.lr": 0.1,
    "train.momentum": 0.0,
    "train.weight_decay": 0.025,
    "train.threads": 1,
    "probes.every": 41,  # one probed step per epoch
    "probes.snapshot_every": 0,  # the first and the last
}


def test_kolen_pollack_aligns_b_with_w_on_digits(tmp_path):
    out = tmp_path / "kp.zarr"
    result = record(build_config(overrides=KP_DIGITS), out, progress=False)
    assert result.status == "completed"
    assert result.final["val_accuracy"] >= 0.9
    tree = open_run(out)
    assert tree.attrs["dataset"]["n_train"] == 1297  # 41 steps per epoch
    angle = tree["steps"].ds.feedback_angle.dropna("step", how="all")
    assert angle.sizes["step"] == 30
    for layer in tree.attrs["layers"]:
        series = angle.sel(layer=layer).values
        assert 80 < series[0] < 100, layer  # B starts as FA's random B
        assert np.all(np.diff(series) < 0), layer  # and comes closer at every epoch
        assert series[-1] < 10, (layer, series[-1])
        snap = tree[f"snapshots/{layer}"].ds
        last = _angle(
            torch.from_numpy(snap.weight.values[-1]), torch.from_numpy(snap.feedback.values[-1])
        )
        assert last < 10, (layer, last)


def _dfa_closed_form(model, x, y):
    """One step's update of a 2-hidden-layer tanh MLP under DFA, from W and B in float64
    (mean cross-entropy, as the trainer's loss)."""
    w = {n: getattr(model, n).weight.detach().double() for n in ("fc1", "fc2", "fc3")}
    b = {n: getattr(model, n).bias.detach().double() for n in ("fc1", "fc2", "fc3")}
    fb = {n: getattr(model, n).feedback.double() for n in ("fc2", "fc3")}
    x = x.reshape(len(x), -1).double()
    h1 = torch.tanh(x @ w["fc1"].T + b["fc1"])
    h2 = torch.tanh(h1 @ w["fc2"].T + b["fc2"])
    out = h2 @ w["fc3"].T + b["fc3"]
    e = (torch.softmax(out, 1) - F.one_hot(y, out.shape[1])) / len(x)
    d2 = (e @ fb["fc3"]) * (1 - h2**2)
    d1 = (e @ fb["fc2"]) * (1 - h1**2)
    return {
        "fc1": (d1.T @ x, d1.sum(0)),
        "fc2": (d2.T @ h1, d2.sum(0)),
        "fc3": (e.T @ h2, e.sum(0)),
    }


@pytest.mark.parametrize("reference", [False, True], ids=["plain", "with-bp-reference"])
def test_dfa_step_in_the_trainer_is_the_closed_form(reference):
    """One real training step: every layer's update is the one the output error gives through
    that layer's B; also on a probed step, where the BP reference pass runs on the same graph."""
    lr = 0.1
    trainer = _trainer("dfa", **{"model.activation": "tanh", "train.lr": lr, "train.momentum": 0.0})
    if reference:
        trainer.recorder.needs = lambda step: frozenset({"reference", "weights_before"})
    model, data = trainer.model, trainer.data
    x, y = data.x_train[:30], data.y_train[:30]
    expected = _dfa_closed_form(model, x, y)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train_batch(x, y)
    for name, (grad_w, grad_b) in expected.items():
        layer = getattr(model, name)
        scale = float(grad_w.abs().max())
        assert scale > 1e-4
        torch.testing.assert_close(layer.weight.grad.double(), grad_w, rtol=0, atol=1e-6 * scale)
        torch.testing.assert_close(layer.bias.grad.double(), grad_b, rtol=0, atol=1e-6 * scale)
        for param in ("weight", "bias"):  # plain SGD: W - lr·grad, nothing else
            p = getattr(layer, param)
            assert torch.equal(p.detach(), before[f"{name}.{param}"].add(p.grad, alpha=-lr))


def _mirror(layer: nn.Module, **settings):
    rule = make_rule("wm", 0, **settings)
    attach_rule(layer, rule, torch.Generator().manual_seed(1))
    return rule, feedback_layers(layer)


def test_weight_mirror_update_is_lr_times_w_minus_b_in_expectation(float64):
    torch.manual_seed(0)
    layer = Linear(6, 4)
    rule, layers = _mirror(layer)
    lr, n = rule.config.mirror_lr, rule.config.mirror_samples
    assert (lr, n) == (0.01, 32)  # the defaults
    w, b0 = layer.weight.detach(), layer.feedback.clone()
    draws = 2000
    total = torch.zeros_like(b0)
    for _ in range(draws):
        layer.feedback.copy_(b0)
        rule.after_step(layers, None)
        total += layer.feedback - b0
    mean = total / draws
    # one sample's y ξᵀ has variance |w_row|² + w_ij² per entry; the mean is over n·draws
    sigma = lr * ((w**2).sum(1, keepdim=True) + w**2).sqrt() / math.sqrt(n * draws)
    assert ((mean - lr * (w - b0)).abs() <= 5 * sigma).all()
    assert (lr * (w - b0)).abs().max() > 20 * sigma.max()  # the test can see the drift


@pytest.mark.parametrize(
    "make", [lambda: Linear(64, 64), lambda: Conv2d(4, 8, 3)], ids=["linear", "conv"]
)
def test_weight_mirror_learns_a_fixed_w(make, float64):
    """With the default mirror_lr (0.01) and mirror_samples (32), 1,000 mirror steps bring B
    from FA's random B to W. What is left is noise: per entry a variance of about
    lr/2·|w_row|²/n against W's |w_row|²/fan_in, an angle of atan(sqrt(lr·fan_in/(2n))),
    about 6° at fan-in 64 (at fan-in 512 it would be about 16°)."""
    torch.manual_seed(0)
    layer = make()
    rule, layers = _mirror(layer)
    lr, n = rule.config.mirror_lr, rule.config.mirror_samples
    w = layer.weight.detach().clone()
    start = _angle(w, layer.feedback)
    for _ in range(1000):
        rule.after_step(layers, None)
    assert torch.equal(layer.weight.detach(), w)
    fan_in = w[0].numel()
    predicted = math.degrees(math.atan(math.sqrt(lr * fan_in / (2 * n))))
    end = _angle(w, layer.feedback)
    assert start > 80 and end < 10 and end < 2 * predicted, (start, end, predicted)
    ratio = float(layer.feedback.norm() / w.norm())
    assert 0.9 < ratio < 1.2  # B takes W's size too


@pytest.mark.parametrize(
    "make", [lambda: Linear(6, 4), lambda: Conv2d(2, 3, 2)], ids=["linear", "conv"]
)
def test_weight_mirror_every_k_mirrors_after_steps_k_2k_by_the_closed_form(make, float64):
    """rule.mirror_every=3: B stays bitwise as it is after steps 1, 2, 4, 5, 7 and takes
    B ← (1 − η)B + (η/n)·(W ξᵀ)ξ after steps 3 and 6, ξ the noise generator's next n
    samples (drawn on mirror steps only), computed here in float64 from W as it then is."""
    torch.manual_seed(0)
    layer = make()
    rule, layers = _mirror(layer, mirror_every=3)
    lr, n = rule.config.mirror_lr, rule.config.mirror_samples
    noise = torch.Generator().manual_seed(rule.seed + 3)  # the rule's own seeding
    for step in range(1, 8):
        with torch.no_grad():
            layer.weight.add_(0.01 * torch.randn_like(layer.weight))  # W moves every step
        w = layer.weight.detach().clone().reshape(layer.weight.shape[0], -1)
        before = layer.feedback.detach().clone().reshape(w.shape)
        rule.after_step(layers, None)
        after = layer.feedback.detach().reshape(w.shape)
        if step % 3:
            assert torch.equal(after, before), step
            continue
        xi = torch.randn((n, w.shape[1]), generator=noise, dtype=torch.float64)
        expected = (1 - lr) * before + (lr / n) * (w @ xi.T) @ xi
        torch.testing.assert_close(after, expected, rtol=1e-12, atol=1e-14)
        assert not torch.equal(after, before)
    assert int(layer.mirror_steps) == 7


def test_weight_mirror_every_step_keeps_no_counter():
    """The default (every step, as Akrout et al.) adds nothing to the model's state, so its
    stores and checkpoints are those of the rule before ``mirror_every`` existed."""
    _, layers = _mirror(Linear(6, 4))
    assert all("mirror_steps" not in dict(m.named_buffers()) for m in layers.values())
    _, layers = _mirror(Linear(6, 4), mirror_every=2)
    assert all("mirror_steps" in dict(m.named_buffers()) for m in layers.values())


def test_frozen_leaves_hidden_layers_bitwise_alone(tmp_path):
    """Weight decay and momentum included: only the read-out's parameters move."""
    overrides = {
        "train.weight_decay": 0.01,
        "train.epochs": 2,
        "probes.snapshot_every": 5,
        "probes.checkpoint_seconds": 0,
    }
    config = _config("frozen", **overrides)
    out = tmp_path / "frozen.zarr"
    assert record(config, out, progress=False).status == "completed"
    tree = open_run(out)
    for layer in ("fc1", "fc2", "fc3"):
        w = tree[f"snapshots/{layer}"].ds.weight.values
        assert len(w) > 3
        unchanged = all(np.array_equal(w[0], snap) for snap in w[1:])
        assert unchanged == (layer != "fc3"), layer
    angles = tree["steps"].ds.update_angle
    assert np.isnan(angles.sel(layer=["fc1", "fc2"]).values).all()  # no update to measure
    assert np.isfinite(angles.sel(layer="fc3").values).all()
    # every parameter (biases too), trained by the same run's trainer, against a fresh init
    trainer = _trainer("frozen", **overrides)
    init = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    assert trainer.run().status == "completed"
    for name, value in trainer.model.state_dict().items():
        moved = name in ("fc3.weight", "fc3.bias")  # the read-out's B stays 0
        assert torch.equal(value, init[name]) != moved, name


# --------------------------------------------------------------------------- 3. learning

#: 5 epochs of a 2x64 ReLU MLP on the embedded digits (1,297 train / 500 val), batch 32,
#: SGD lr 0.01 with momentum 0.9: about a second per run. Validation accuracy over seeds 0-9
#: (measured): frozen 0.55-0.69, every rule 0.86 or more, FA 0.81-0.89, BP 0.93-0.97.
LEARN = {
    "model.depth": 2,
    "model.width": 64,
    "train.epochs": 5,
    "train.batch_size": 32,
    "train.threads": 1,
    "probes.every": 0,
    "probes.snapshot_every": 0,
}
#: Kolen-Pollack needs weight decay; this little leaves B far from W in 205 steps (lr·wd·steps
#: = 0.002), so it learns here much as FA does
LEARN_KP = {"train.weight_decay": 0.001}


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """Final validation accuracy of a rule's run (each recorded once per module)."""
    done: dict[tuple[str, int], float] = {}
    where = tmp_path_factory.mktemp("learn")

    def get(rule: str, seed: int = 0) -> float:
        if (rule, seed) not in done:
            overrides = {**LEARN, "rule.name": rule, "train.seed": seed}
            if rule == "kp":
                overrides.update(LEARN_KP)
            result = record(
                build_config(overrides=overrides), where / f"{rule}-{seed}.zarr", progress=False
            )
            assert result.status == "completed"
            done[rule, seed] = result.final["val_accuracy"]
        return done[rule, seed]

    return get


def test_frozen_control_learns_something_but_not_much(learned):
    accuracy = learned("frozen")
    assert 0.4 <= accuracy <= 0.8  # far above chance (0.1): random features and a read-out


@pytest.mark.parametrize("rule", [r for r in RULES if r != "frozen"])
def test_rule_learns_digits_and_beats_the_frozen_control(rule, learned):
    accuracy = learned(rule)
    assert accuracy >= 0.8, (rule, accuracy)
    # the hidden layers earn their keep: well past the read-out alone, same seed and config
    assert accuracy >= learned("frozen") + 0.1, (rule, accuracy, learned("frozen"))


# ------------------------------------------------------------------ 4. checkpoint and resume

#: 2 epochs of 10 steps, a checkpoint at every epoch's end, a snapshot every 5 steps and every
#: probe at every step, so that a difference anywhere shows in the store
RESUME = {
    "model.width": 16,
    "data.n_train": 300,
    "data.n_val": 60,
    "train.epochs": 2,
    "probes.snapshot_every": 5,
    "probes.checkpoint_seconds": 0,
}
STOP_AT = 14  # mid-way through the second epoch, 4 steps after its checkpoint


#: the weight mirror after every 3rd step: its step counter must come back with a resume (it
#: mirrors after steps 3, 6, 9, 12: a counter restarted at the checkpoint would shift them)
WM_EVERY_3 = "wm-every-3"


def _resume_config(rule: str):
    extra = {"train.weight_decay": 0.01} if rule == "kp" else {}
    if rule == WM_EVERY_3:
        rule, extra = "wm", {"rule.mirror_every": 3}
    return _config(rule, **RESUME, **extra)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """The unbroken run of a rule (recorded once per module)."""
    done: dict[str, object] = {}

    def get(rule: str):
        if rule not in done:
            path = tmp_path_factory.mktemp("unbroken") / f"{rule}.zarr"
            assert record(_resume_config(rule), path, progress=False).status == "completed"
            done[rule] = path
        return done[rule]

    return get


def _kill_in_step(monkeypatch, step: int) -> None:
    """Interrupt the run inside step ``step`` (as a second Ctrl-C would): it goes back to its
    last checkpoint."""
    train_step = Trainer._train_step

    def killed_in(self, x, y):
        if self.step == step:
            raise KeyboardInterrupt
        return train_step(self, x, y)

    monkeypatch.setattr(Trainer, "_train_step", killed_in)


@pytest.mark.parametrize("how", ["stop", "kill"])
@pytest.mark.parametrize("rule", ["brsf", "frsf", "kp", "wm", WM_EVERY_3])
def test_resume_equals_the_unbroken_run(rule, how, unbroken, tmp_path, monkeypatch):
    """``stop``: asked to stop after step 14, the run checkpoints there; ``kill``: interrupted
    inside step 14, it goes back to its checkpoint at step 10 and draws again from the rule's
    generators as they were then."""
    if how == "stop":
        keep_safe = Trainer.keep_safe

        def stop_after(self):
            keep_safe(self)
            if self.step == STOP_AT:
                self.stop_requested = "SIGTERM"

        monkeypatch.setattr(Trainer, "keep_safe", stop_after)
    else:
        _kill_in_step(monkeypatch, STOP_AT)
    broken = tmp_path / "broken.zarr"
    first = record(_resume_config(rule), broken, progress=False)
    assert first.status == "interrupted" and first.steps == STOP_AT, first
    monkeypatch.undo()
    assert resume(broken, progress=False).status == "completed"

    reference = unbroken(rule)
    mine, theirs = store_arrays(broken), store_arrays(reference)
    assert sorted(mine) == sorted(theirs)
    assert any(name.endswith("feedback") for name in theirs)
    for name, expected in theirs.items():
        got = mine[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert np.array_equal(got, expected, equal_nan=got.dtype.kind in "fc"), name
    a, b = open_run(broken).attrs, open_run(reference).attrs
    for key in ("status", "steps", "epochs", "final"):
        assert a[key] == b[key], key
    assert check_store(broken, decode=True) == []


@pytest.mark.parametrize("rule", ["fa", *RULES])
def test_a_rule_that_says_its_b_is_fixed_never_changes_it(rule):
    """Checkpoints write a B that ``feedback_is_fixed`` calls fixed once per slot; the claim
    must hold through training (and the rules that update B must say so)."""
    cfg = _config(rule, **({"train.weight_decay": 0.01} if rule == "kp" else {}))
    data, model, _, learning_rule = prepare(cfg)
    layers = {n: m for n, m in feedback_layers(model).items() if m.feedback is not None}
    start = {n: layer.feedback.clone() for n, layer in layers.items()}
    trainer = Trainer(cfg, data, model, learning_rule, None, progress=False)
    for i in range(3):
        trainer.train_batch(
            data.x_train[i * 30 : (i + 1) * 30], data.y_train[i * 30 : (i + 1) * 30]
        )
    same = [torch.equal(start[n], layer.feedback) for n, layer in layers.items()]
    assert all(same) == learning_rule.feedback_is_fixed(), (rule, same)


def test_a_fixed_b_skipped_in_a_reused_slot_resumes_exactly(tmp_path, monkeypatch):
    """Four epochs, checkpoints at steps 10, 20, 30 (slots a, b, a): the third leaves FA's B
    as slot a had it; killed in step 34, the run resumes from it equal to the unbroken run."""
    cfg = _config("fa", **{**RESUME, "train.epochs": 4})
    unbroken = tmp_path / "unbroken.zarr"
    assert record(cfg, unbroken, progress=False).status == "completed"
    written: list[list[str]] = []  # the arrays each checkpoint wrote
    save, target = checkpoint.save, checkpoint._target

    def counted_save(*args, **kwargs):
        written.append([])
        save(*args, **kwargs)

    def counted_target(writer, slot, name, value):
        written[-1].append(name)
        return target(writer, slot, name, value)

    monkeypatch.setattr(checkpoint, "save", counted_save)
    monkeypatch.setattr(checkpoint, "_target", counted_target)
    _kill_in_step(monkeypatch, 34)
    broken = tmp_path / "broken.zarr"
    assert record(cfg, broken, progress=False).status == "interrupted"
    monkeypatch.undo()
    info = open_run(broken).attrs["checkpoint"]
    assert info["step"] == 30 and info["slot"] == "a"
    feedback = [[n for n in names if n.endswith(".feedback")] for names in written]
    assert len(feedback) == 3 and feedback[0] == feedback[1] != [] and feedback[2] == []
    assert "model.fc1.weight" in written[2]
    arrays, _ = checkpoint.load(zarr.open_group(str(broken), mode="r"))
    _, model, _, _ = prepare(cfg)
    for name, layer in feedback_layers(model).items():  # B as drawn at the start
        assert np.array_equal(arrays[f"model.{name}.feedback"], layer.feedback.numpy())
    assert resume(broken, progress=False).status == "completed"
    mine, theirs = store_arrays(broken), store_arrays(unbroken)
    assert sorted(mine) == sorted(theirs)
    for name, expected in theirs.items():
        assert np.array_equal(mine[name], expected, equal_nan=expected.dtype.kind in "fc"), name


def test_a_snapshot_in_flight_at_a_checkpoint_is_taken_again_on_resume(
    unbroken, tmp_path, monkeypatch
):
    """The checkpoint at step 10 does not wait for the snapshot of step 10 (slowed down here,
    so that it is still being written): it commits the rows before it, and the resumed run
    takes it again from the same state. The store equals the unbroken run's."""
    flush = RunWriter._flush_snapshots

    def slow_flush(self, *args):
        time.sleep(0.3)
        flush(self, *args)

    monkeypatch.setattr(RunWriter, "_flush_snapshots", slow_flush)
    _kill_in_step(monkeypatch, STOP_AT)
    broken = tmp_path / "broken.zarr"
    assert record(_resume_config("fa"), broken, progress=False).status == "interrupted"
    monkeypatch.undo()
    info = open_run(broken).attrs["checkpoint"]
    assert info["step"] == 10 and info["last_snapshot"] == 5  # left out: in flight
    assert info["committed"]["snapshots"] == 2  # steps 0 and 5
    assert resume(broken, progress=False).status == "completed"
    mine, theirs = store_arrays(broken), store_arrays(unbroken("fa"))
    assert sorted(mine) == sorted(theirs)
    for name, expected in theirs.items():
        assert np.array_equal(mine[name], expected, equal_nan=expected.dtype.kind in "fc"), name
    steps = open_run(broken)["snapshots/fc1/snapshot_step"][...]
    assert list(steps) == [0, 5, 10, 15, 20]


def test_training_goes_on_while_a_checkpoint_is_written(unbroken, tmp_path, monkeypatch):
    """The checkpoint of step 10 is written on the background thread (slowed down here) while
    steps 11-13 run; it holds step 10's state, copied when it was taken: killed in step 14,
    the run resumes from it equal to the unbroken run."""
    events: list[tuple[str, int]] = []
    write_checkpoint, train_batch = RunWriter.write_checkpoint, Trainer.train_batch

    def slow(self, writes, lengths, info, done):
        def written():
            events.append(("written", info["step"]))
            done()

        write_checkpoint(self, [partial(time.sleep, 0.5), *writes], lengths, info, written)

    def logged(self, x, y):
        events.append(("step", self.step + 1))
        return train_batch(self, x, y)

    monkeypatch.setattr(RunWriter, "write_checkpoint", slow)
    monkeypatch.setattr(Trainer, "train_batch", logged)
    _kill_in_step(monkeypatch, STOP_AT)
    broken = tmp_path / "broken.zarr"
    assert record(_resume_config("fa"), broken, progress=False).status == "interrupted"
    monkeypatch.undo()
    assert events.index(("step", 12)) < events.index(("written", 10))
    assert open_run(broken).attrs["checkpoint"]["step"] == 10
    assert resume(broken, progress=False).status == "completed"
    mine, theirs = store_arrays(broken), store_arrays(unbroken("fa"))
    assert sorted(mine) == sorted(theirs)
    for name, expected in theirs.items():
        assert np.array_equal(mine[name], expected, equal_nan=expected.dtype.kind in "fc"), name


def test_a_checkpoint_that_fails_in_the_background_fails_the_run_cleanly(tmp_path, monkeypatch):
    """A full disk while the step-20 checkpoint is written: a step later the run stops with
    the disk's error, the store is readable and keeps the step-10 checkpoint, and resumes."""
    write_checkpoint = RunWriter.write_checkpoint

    def full():
        raise OSError(28, "No space left on device")

    def failing(self, writes, lengths, info, done):
        if info["step"] == 20:
            writes = [full]
        write_checkpoint(self, writes, lengths, info, done)

    monkeypatch.setattr(RunWriter, "write_checkpoint", failing)
    out = tmp_path / "full.zarr"
    with pytest.raises(StoreError, match="No space left on device"):
        record(_config("fa", **{**RESUME, "train.epochs": 3}), out, progress=False)
    monkeypatch.undo()
    attrs = open_run(out).attrs
    assert attrs["status"] == "failed" and "No space left" in attrs["message"]
    assert attrs["checkpoint"]["step"] == 10 and attrs["committed"]["steps"] >= 20
    assert check_store(out, decode=True) == []
    assert resume(out, progress=False).status == "completed"
    steps = open_run(out)["steps"].ds
    assert list(steps.step.values) == list(range(1, 31))


def test_a_resume_removes_the_files_a_killed_write_left_half_written(tmp_path, monkeypatch):
    """zarr writes a file under a temporary name and renames it; a kill in between leaves the
    temporary file, which readers warn about each time they list its group. Resuming removes
    those (and nothing else)."""
    _kill_in_step(monkeypatch, STOP_AT)
    out = tmp_path / "killed.zarr"
    assert record(_resume_config("fa"), out, progress=False).status == "interrupted"
    monkeypatch.undo()
    left = [out / f"zarr.{'a' * 32}.partial", out / "steps" / f"0.{'0' * 32}.partial"]
    # not a name zarr gives, so not the writer's to remove (in an array's folder, which
    # readers do not list)
    mine = out / "steps" / "loss" / "notes.partial"
    for path in (*left, mine):
        path.write_bytes(b"{")
    with pytest.warns(UserWarning, match="not recognized as a component"):
        store_arrays(out)
    assert resume(out, progress=False).status == "completed"
    assert not any(path.exists() for path in left) and mine.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store_arrays(out)
