"""Probe arithmetic against direct computations (the angles themselves: test_angles)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


def _float64_weight_step(before, after, feedback):
    """The sweep's reductions as float64 tensor expressions (exact counts)."""
    b, a, f = before.double(), after.double(), feedback.double()
    return {
        "weight_sq": float((a * a).sum()),
        "update_sq": float(((b - a) ** 2).sum()),
        "sign_flips": int((((b > 0) & (a < 0)) | ((b < 0) & (a > 0))).sum()),
        "zeros": int((a == 0).sum()),
        "feedback_dot": float((a * f).sum()),
        "feedback_sq": float((f * f).sum()),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_step_on_several_threads_equals_a_float64_computation(dtype):
    """A layer large enough for the sweep to run on torch's threads (two here), with zeros,
    tiny flips, flips in the last, partial block, and a size that is no multiple of a block:
    the same values as a float64 computation, and the same as one thread's."""
    from dynalign import kernels
    from dynalign.weight_step import PARALLEL_FROM, weight_step

    n = PARALLEL_FROM + kernels.BLOCK // 3
    g = torch.Generator().manual_seed(7)
    before = torch.randn(n, generator=g, dtype=torch.float64)
    after = before + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    feedback = torch.randn(n, generator=g, dtype=torch.float64)
    after[:1000] = 0.0
    before[1000:1003] = 0.0
    before[2000:2004], after[2000:2004] = 1e-30, torch.tensor([-1e-30, 1e-30, -2e-30, 0.0])
    after[-5:] = -before[-5:]
    before, after, feedback = before.to(dtype), after.to(dtype), feedback.to(dtype)
    expected = _float64_weight_step(before, after, feedback)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parallel = weight_step(before, after, feedback)
        without = weight_step(before, after, None)
    finally:
        torch.set_num_threads(threads)
    serial = weight_step(before, after, feedback)
    for got in (parallel, serial):
        assert got.sign_flips == expected["sign_flips"] and got.zeros == expected["zeros"]
        for name in ("weight_sq", "update_sq", "feedback_dot", "feedback_sq"):
            assert getattr(got, name) == pytest.approx(expected[name], rel=1e-12), name
    assert without.feedback_dot is None and without.feedback_sq is None
    assert without.weight_sq == pytest.approx(parallel.weight_sq, rel=1e-12)
    assert without.sign_flips == parallel.sign_flips
    arrays = [t.numpy() for t in (before, after, feedback)]
    assert (kernels.sweep(*arrays, 1) == kernels.sweep(*arrays, 2)).all()  # same blocks


def test_blocked_sweep_edge_cases():
    """No weights, NaN (counted neither as a flip nor a zero, and NaN sums), one block."""
    import numpy as np

    from dynalign import kernels

    empty = np.zeros(0, np.float32)
    assert (kernels.sweep(empty, empty, None, 2)[:4] == 0).all()
    before = np.array([1.0, -1.0, 2.0, np.nan], np.float32)
    after = np.array([-1.0, np.nan, 0.0, 3.0], np.float32)
    sums = kernels.sweep(before, after, after, 2)
    assert np.isnan(sums[0]) and np.isnan(sums[1]) and np.isnan(sums[4])
    assert (sums[2], sums[3]) == (1.0, 1.0)


CONV_INPUT = (3, 12, 12)


def _probe_step(rule: str, rows: int = 8, seed: int = 0, conv: bool = False):
    """One real step of a small tanh MLP (or, with ``conv``, of a ReLU ConvNet on 3x12x12
    images): the probe context, and the tensors to check it by."""
    from dynalign.feedback import feedback_layers
    from dynalign.models import MLP
    from dynalign.models.convnet import ConvNet
    from dynalign.probes import StepContext
    from dynalign.reference import backward, start_capture
    from dynalign.rules import attach_rule, make_rule

    torch.manual_seed(seed)
    shape = CONV_INPUT if conv else (20,)
    net = ConvNet(shape, 4, [4, 6]) if conv else MLP(20, 4, depth=2, width=30, activation="tanh")
    attach_rule(net, make_rule(rule), torch.Generator().manual_seed(seed), shape)
    layers = feedback_layers(net)
    x, y = torch.randn(rows, *shape), torch.randint(0, 4, (rows,))
    params = list(net.parameters())
    start_capture(list(layers.values()))
    out = net(x)
    terms = net.loss_terms(out, x, y)
    grads = backward(terms["loss"], params, list(layers.values()), reference=True)
    weights = [m.weight.detach() for m in layers.values()]
    ctx = StepContext(
        step=1,
        names=list(layers),
        weights=weights,
        feedback=[m.feedback for m in layers.values()],
        routed=[m.route is not None for m in layers.values()],
        gradients=grads,
        weights_before=[w.clone() for w in weights],
    )
    return net, layers, x, y, ctx


@pytest.mark.parametrize("rows", [8, 200])  # the Gram form, and gradients formed by autograd
def test_gradient_norm_is_the_backprop_gradients_norm(rows):
    from dynalign.probes import AngleProbe

    net, layers, x, y, ctx = _probe_step("fa", rows)
    # the true gradient: autograd through the same net written out in float64
    h = x.double()
    ws = [m.weight.detach().double().requires_grad_() for m in layers.values()]
    for i, (w, m) in enumerate(zip(ws, layers.values(), strict=True)):
        h = h @ w.T + m.bias.detach().double()
        if i < len(ws) - 1:
            h = torch.tanh(h)
    loss = torch.nn.functional.cross_entropy(h, y)
    true = torch.autograd.grad(loss, ws)
    values = AngleProbe(1).compute(ctx)
    expected = [float(g.norm()) for g in true]
    assert values["gradient_norm"] == pytest.approx(expected, rel=1e-5)
    assert list(values["reference_valid"]) == [1.0, 1.0, 1.0]


def test_angles_are_nan_where_the_true_gradient_is_below_the_floor():
    from dynalign.probes import AngleProbe

    net, layers, x, y, ctx = _probe_step("fa", 200)
    # the second layer's true gradient at the rounding of its weights: no angle is defined
    w = ctx.weights[1]
    tiny = torch.full_like(w, 1e-3 * torch.finfo(w.dtype).eps * float(w.norm()) / w.numel())
    ctx.gradients.bp_grads[1] = tiny
    values = AngleProbe(1).compute(ctx)
    assert values["reference_valid"][1] == 0.0
    assert math.isnan(values["update_angle"][1]) and math.isnan(values["delta_angle"][1])
    assert values["gradient_norm"][1] == pytest.approx(float(tiny.norm()), rel=1e-6)
    assert values["reference_valid"][0] == 1.0 and not math.isnan(values["update_angle"][0])


def test_activation_rms_is_the_rms_of_each_layers_output():
    from dynalign.probes import ActivationProbe

    net, layers, x, y, ctx = _probe_step("bp")
    h, expected = x, []
    for i, m in enumerate(layers.values()):
        h = torch.nn.functional.linear(h, m.weight, m.bias)
        expected.append(float(h.detach().double().square().mean().sqrt()))
        h = torch.tanh(h) if i < len(layers) - 1 else h
    got = ActivationProbe(1).compute(ctx)["activation_rms"]
    assert list(got) == pytest.approx(expected, rel=1e-6)


def _feedback_alignment_path(x, weight, feedback, op):
    """op(x, W) forward, with the error reaching x through B and W's gradient local: FA's
    backward pass by autograd alone, written independently of dynalign's layers."""
    return op(x.detach(), weight) + op(x, feedback) - op(x, feedback).detach()


def test_conv_probes_equal_a_plain_float64_convnet():
    """A ConvNet's probes (its feature maps run channels-last on the CPU) against the same
    net written in plain torch in float64, in the default layout: the update and delta angles
    from FA's and BP's gradients and deltas formed by autograd, the activation scale, the
    true gradient's norm."""
    from dynalign.probes import ActivationProbe, AngleProbe

    net, layers, x, y, ctx = _probe_step("fa", 5, seed=2, conv=True)
    assert ctx.gradients.outputs[0].shape[1] == 4  # rows of channels: one per position
    w = [m.weight.detach().double().requires_grad_() for m in layers.values()]
    b = [m.bias.detach().double() for m in layers.values()]
    fb = [m.feedback.double() for m in layers.values()]
    conv = [lambda h, k, i=i: F.conv2d(h, k, b[i], padding=1) for i in (0, 1)]
    linear = lambda h, k: F.linear(h, k, b[2])  # noqa: E731

    def forward(feedback_alignment: bool):
        h, outs = x.double(), []
        for i, op in enumerate([*conv, linear]):
            if i == 2:
                h = h.flatten(1)
            if feedback_alignment:
                h = _feedback_alignment_path(h, w[i], fb[i], op)
            else:
                h = op(h, w[i])
            h.retain_grad()
            outs.append(h)
            if i < 2:
                h = F.max_pool2d(F.relu(h), 2)
        return outs, F.cross_entropy(h, y)

    grads, deltas, outs = {}, {}, None
    for fa in (True, False):
        outs, loss = forward(fa)
        grads[fa] = torch.autograd.grad(loss, w, retain_graph=True)
        loss.backward()
        deltas[fa] = [o.grad for o in outs]

    def degrees(a, b):
        a, b = a.detach().reshape(-1), b.detach().reshape(-1)
        return math.degrees(math.acos(min(1.0, float(a @ b / (a.norm() * b.norm())))))

    angles = AngleProbe(1).compute(ctx)
    rms = ActivationProbe(1).compute(ctx)["activation_rms"]
    for i in range(3):
        assert angles["update_angle"][i] == pytest.approx(
            degrees(grads[True][i], grads[False][i]), abs=1e-3
        )
        assert angles["delta_angle"][i] == pytest.approx(
            degrees(deltas[True][i], deltas[False][i]), abs=1e-3
        )
        assert angles["gradient_norm"][i] == pytest.approx(float(grads[False][i].norm()), rel=1e-5)
        assert rms[i] == pytest.approx(float(outs[i].detach().square().mean().sqrt()), rel=1e-5)
    assert 1 < angles["delta_angle"][0] < 179 and angles["delta_angle"][2] == 0.0


def test_feature_maps_pair_by_position_whatever_their_layout():
    """A channels-last map and the same map in the default layout give the same rows (one row
    of channels per sample and position); the channels-last one is viewed, not copied."""
    from dynalign.conv import Conv2d
    from dynalign.feedback import Linear

    maps = torch.randn(2, 3, 4, 5)
    last = maps.contiguous(memory_format=torch.channels_last)
    rows = Conv2d.as_rows(maps)
    assert rows.shape == (2 * 4 * 5, 3)
    assert torch.equal(rows, Conv2d.as_rows(last))
    assert torch.equal(rows[4 * 5 + 7], maps[1, :, 1, 2])  # sample 1, position (1, 2)
    assert Conv2d.as_rows(last).data_ptr() == last.data_ptr()
    # a Linear layer's features are its last dimension, whatever the rank
    assert torch.equal(Linear.as_rows(maps), maps.reshape(-1, 5))


def test_dfa_has_no_feedback_angle_for_hidden_layers():
    from dynalign.probes import AngleProbe

    net, layers, x, y, ctx = _probe_step("dfa", 8)
    fb = AngleProbe(1).compute(ctx)["feedback_angle"]
    assert math.isnan(fb[0]) and math.isnan(fb[1])  # B is (outputs, in): no angle to W
    assert 0 < fb[2] < 180  # the read-out's B has W's shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_norms_equal_float64_norms(dtype):
    """The compiled float64-accumulated norms (float32, float64) and the tensor path (float16)
    against the norm of a float64 copy, on conv-shaped outputs, zeros, an empty tensor and a
    non-contiguous view."""
    from dynalign.weight_step import norms

    g = torch.Generator().manual_seed(5)
    maps = torch.randn(7, 16, 9, 9, generator=g).to(dtype)
    wide = (1e30 if dtype == torch.float32 else 1e3) * torch.randn(300, generator=g)
    cases = [maps, torch.zeros(4, 5, dtype=dtype), torch.zeros(0, dtype=dtype), maps[:, ::2]]
    cases.append(wide.to(dtype))  # float32 values whose squares overflow float32
    for t, got in zip(cases, norms(*cases), strict=True):
        assert got == pytest.approx(
            float(t.double().norm()), rel=1e-12 if dtype != torch.float16 else 1e-6, abs=0.0
        )
    assert math.isnan(norms(torch.tensor([1.0, math.nan], dtype=dtype))[0])
    assert norms(torch.tensor([1.0, math.inf], dtype=dtype))[0] == math.inf


@pytest.mark.parametrize("clip", [None, 0.05])
def test_update_angle_with_the_gradient_norm_from_the_optimisers_pass(
    tmp_path, tiny_config, monkeypatch, clip
):
    """Where the update angle takes its Gram form, the compiled SGD pass hands it |G₁|² (summed
    over the gradient it applies) in place of one product with K. The angles and norms agree
    with a run whose pass is declined (|G₁|² from K): also under gradient clipping, where the
    pass sees the clipped gradient and its sum must not be used."""
    from dynalign import angles, trainer
    from dynalign.reader import open_run
    from dynalign.record import record

    given = []
    gram_angle_and_norms = angles.gram_angle_and_norms

    def spy(*args):
        given.append(len(args) > 4 and args[4] is not None)
        return gram_angle_and_norms(*args)

    monkeypatch.setattr("dynalign.probes.gram_angle_and_norms", spy)
    runs = {}
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(trainer, "measured_step", lambda *a, **k: None)
        # 8 rows against 64 inputs and outputs: the Gram form for the hidden layers
        cfg = tiny_config(**{"train.batch_size": 8, "model.width": 64, "data.n_train": 80,
                             "train.epochs": 1, "train.grad_clip": clip})  # fmt: skip
        given.clear()
        record(cfg, tmp_path / f"{fused}.zarr", progress=False)
        assert given and any(given) == (fused and clip is None)
        runs[fused] = open_run(tmp_path / f"{fused}.zarr")["steps"].ds
    for name in ("update_angle", "gradient_norm"):
        a, b = runs[True][name].values, runs[False][name].values
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=name)
    if clip is not None:  # clipped on every step: a layer's true gradient alone is longer
        assert (runs[True]["gradient_norm"].max("layer").values > clip).all()
