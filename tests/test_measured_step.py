"""SGD's step with the weight sweep in one pass (``dynalign.measured_step``): W and the velocity
exactly as torch's own step leaves them, the sums as a float64 computation gives them, and the
copy-and-step way wherever the fused one does not apply."""

import math

import numpy as np
import pytest
import torch

from dynalign import kernels, measured_step
from dynalign.measured_step import measured_step as step_measured
from dynalign.measured_step import with_feedback
from dynalign.weight_step import PARALLEL_FROM, weight_step


def _float64_sums(before, after, feedback):
    b, a, f = before.double(), after.double(), feedback.double()
    return [
        float((a * a).sum()),
        float(((b - a) ** 2).sum()),
        int((((b > 0) & (a < 0)) | ((b < 0) & (a > 0))).sum()),
        int((a == 0).sum()),
        float((a * f).sum()),
        float((f * f).sum()),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum,decay", [(0.9, 0.0), (0.9, 1e-3), (0.0, 1e-3), (0.0, 0.0)])
@pytest.mark.parametrize("n,threads", [(3 * 64 + 5, 1), (PARALLEL_FROM + kernels.BLOCK // 3, 2)])
def test_sgd_sweep_steps_as_torchs_sgd_and_sums_in_float64(dtype, momentum, decay, n, threads):
    """Three steps of the compiled update against torch's SGD from the same state (a tail that
    fills no vector, several blocks on two threads): bitwise the same W and velocity, with its
    sums or without; the sums over W before and after (zeros, flips, a weight at zero that
    moves) as in float64."""
    g = torch.Generator().manual_seed(n)
    param = torch.nn.Parameter(torch.randn(n, generator=g, dtype=dtype))
    with torch.no_grad():
        param[:50] = 0.0
    sgd = torch.optim.SGD([param], lr=0.05, momentum=momentum, weight_decay=decay)
    param.grad = torch.randn(n, generator=g, dtype=dtype)
    sgd.step()  # SGD creates the velocity on its first step
    weight = param.detach().clone()
    velocity = sgd.state[param].get("momentum_buffer")
    velocity = None if velocity is None else velocity.clone()
    feedback = torch.randn(n, generator=g, dtype=dtype)
    unmeasured = (weight.clone(), None if velocity is None else velocity.clone())
    kind = np.float64 if dtype == torch.float64 else np.float32
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(3):
            grad = torch.randn(n, generator=g, dtype=dtype)
            grad[:10] = 0.0  # weights at zero that stay there under momentum 0 and no decay
            before = weight.clone()
            param.grad = grad.clone()
            sgd.step()
            sums = kernels.sgd_sweep(
                weight.numpy(), None if velocity is None else velocity.numpy(), grad.numpy(),
                feedback.numpy(), kind(0.05), kind(momentum), kind(decay), threads,
            )  # fmt: skip
            nothing = kernels.sgd_sweep(
                unmeasured[0].numpy(), None if velocity is None else unmeasured[1].numpy(),
                grad.numpy(), None, kind(0.05), kind(momentum), kind(decay), threads,
                measure=False,
            )  # fmt: skip
            assert nothing.size == 0 and torch.equal(unmeasured[0], weight)
            assert torch.equal(weight, param.detach())
            if velocity is not None:
                assert torch.equal(velocity, sgd.state[param]["momentum_buffer"])
                assert torch.equal(unmeasured[1], velocity)
            expected = _float64_sums(before, weight, feedback)
            assert sums[2] == expected[2] and sums[3] == expected[3]
            assert expected[2] > 0  # the steps are large enough to flip signs
            for i in (0, 1, 4, 5):
                assert sums[i] == pytest.approx(expected[i], rel=1e-12)
            # the gradient it applied, summed too (the update angle's |G₁|²)
            assert sums[6] == pytest.approx(float((grad.double() ** 2).sum()), rel=1e-12)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sgd_sweep_counts_flips_and_zeros_at_the_edges(dtype):
    """Sign changes and zeros counted on the values the step leaves, at the edges of the
    number line: ±0 on either side (no side), NaN (no side), ±inf, subnormals crossing zero
    (their product underflows in the weights' dtype), the largest values. The counts are
    compared with the compare-based definition of ``weight_step``, per element."""
    info = torch.finfo(dtype)
    tiny = info.smallest_normal * info.eps  # the smallest subnormal
    # (W before, W after): the step is lr 1, no momentum, no decay, so g = before - after
    pairs = [
        (tiny, -tiny), (-tiny, tiny), (tiny, 0.0), (0.0, -tiny), (-0.0, tiny), (0.0, -0.0),
        (1.0, -0.0), (-1.0, 0.0), (info.max, -info.max), (1.0, 2.0), (-1.0, -3.0),
        (math.inf, -1.0), (-1.0, math.inf), (math.nan, 1.0), (1.0, math.nan), (2.0, -2.0),
    ]  # fmt: skip
    pairs = pairs * 5  # past a vector's width, with a tail
    before = torch.tensor([b for b, _ in pairs], dtype=dtype)
    wanted = torch.tensor([a for _, a in pairs], dtype=dtype)
    weight = before.clone()
    grad = torch.where(torch.isfinite(before) & torch.isfinite(wanted), before - wanted, 0.0)
    kind = np.float64 if dtype == torch.float64 else np.float32
    sums = kernels.sgd_sweep(
        weight.numpy(), None, grad.numpy(), None, kind(1.0), kind(0.0), kind(0.0), 1
    )
    after = weight  # what the step left: the definition is applied to it, not to ``wanted``
    flips = ((before > 0) & (after < 0)) | ((before < 0) & (after > 0))
    assert sums[2] == int(flips.sum()) and sums[3] == int((after == 0).sum())
    assert int(flips.sum()) == 5 * 4  # subnormals both ways, the largest values, ±2


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(40, 300), torch.nn.Tanh(), torch.nn.Linear(300, 5))


def _stepped(net, optimizer, seed):
    """Gradients of a random batch (the same for the same seed)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 40, generator=g), torch.randint(0, 5, (16,), generator=g)
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()


@pytest.mark.parametrize("fixed_feedback", [True, False])
def test_measured_step_equals_copy_and_step(fixed_feedback):
    """A net with biases: the measured step moves every parameter (the biases by the compiled
    update too) bitwise as torch's step does, and its reductions equal ``weight_step`` over a
    copy of W before the step; a B renewed after the step is measured afterwards
    (``with_feedback``)."""
    nets = [_net(), _net()]
    opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) for n in nets]
    feedback = [torch.randn(300, 40), torch.randn(5, 300)]
    for step in range(3):
        for net, opt in zip(nets, opts, strict=True):
            _stepped(net, opt, step)
        weights = [nets[0][0].weight, nets[0][2].weight]
        before = [w.detach().clone() for w in weights]
        grad_sq = [float((w.grad.double() ** 2).sum()) for w in weights]
        opts[0].step()
        given = feedback if fixed_feedback else [None, None]
        stats = step_measured(opts[1], [nets[1][0].weight, nets[1][2].weight], given)
        assert (stats is None) == (step == 0)  # no velocity before the first step
        if stats is None:
            opts[1].step()
            continue
        for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
            assert torch.equal(a, b)
        for i, got in enumerate(stats):
            assert got.gradient_sq == pytest.approx(grad_sq[i], rel=1e-12)
            if not fixed_feedback:
                assert got.feedback_dot is None and got.feedback_sq is None
                got = with_feedback(got, weights[i].detach(), feedback[i])
            want = weight_step(before[i], weights[i].detach(), feedback[i])
            assert (got.sign_flips, got.zeros) == (want.sign_flips, want.zeros)
            for name in ("weight_sq", "update_sq", "feedback_dot", "feedback_sq"):
                assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-12)


@pytest.mark.parametrize("bias_settings", [{"lr": 0.05}, {"nesterov": True}])
def test_biases_in_their_own_group_step_as_torchs(bias_settings):
    """Biases in a group of their own: stepped by the compiled update where that group is plain
    SGD (its own lr here), by torch's step where it is not (Nesterov); bitwise torch's either
    way."""
    nets = [_net(), _net()]

    def sgd(net):
        weights = [net[0].weight, net[2].weight]
        biases = [net[0].bias, net[2].bias]
        return torch.optim.SGD(
            [{"params": weights}, {"params": biases, **bias_settings}], lr=0.1, momentum=0.9
        )

    opts = [sgd(n) for n in nets]
    for step in range(3):
        for net, opt in zip(nets, opts, strict=True):
            _stepped(net, opt, step)
        opts[0].step()
        stats = step_measured(opts[1], [nets[1][0].weight, nets[1][2].weight], [None, None])
        assert (stats is None) == (step == 0)
        if stats is None:
            opts[1].step()
        for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
            assert torch.equal(a, b)


def _declines(optimizer, net, weights, feedback=None):
    """The measured step refuses (returns None) and leaves every parameter as it was."""
    before = [p.detach().clone() for p in net.parameters()]
    stats = step_measured(optimizer, weights, feedback or [None] * len(weights))
    unchanged = all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    return stats is None and unchanged


def test_measured_step_declines_what_it_cannot_do_exactly(monkeypatch):
    net = _net()
    weights = [net[0].weight, net[2].weight]
    adam = torch.optim.Adam(net.parameters())
    _stepped(net, adam, 0)
    assert _declines(adam, net, weights)
    for settings in ({"nesterov": True, "momentum": 0.9}, {"dampening": 0.1, "momentum": 0.9}):
        sgd = torch.optim.SGD(net.parameters(), lr=0.1, **settings)
        _stepped(net, sgd, 0)
        sgd.step()
        _stepped(net, sgd, 1)
        assert _declines(sgd, net, weights), settings
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    _stepped(net, sgd, 0)
    assert _declines(sgd, net, weights)  # the first step creates the velocity
    sgd.step()
    _stepped(net, sgd, 1)
    assert _declines(sgd, net, weights, [torch.randn(300, 40, dtype=torch.float64), None])
    monkeypatch.setitem(measured_step._AGREES, torch.float32, False)  # a CPU that rounds apart
    assert _declines(sgd, net, weights)
    monkeypatch.undo()
    assert step_measured(sgd, weights, [None, None]) is not None


def test_untrained_weights_are_measured_unchanged():
    """A weight the optimiser does not hold (the head-only control's hidden layers) stays as it
    is, with no update and no flips."""
    net = _net()
    sgd = torch.optim.SGD(net[2].parameters(), lr=0.1, momentum=0.9)
    _stepped(net, sgd, 0)
    sgd.step()
    _stepped(net, sgd, 1)
    hidden = net[0].weight.detach().clone()
    stats = step_measured(sgd, [net[0].weight, net[2].weight], [None, None])
    assert torch.equal(hidden, net[0].weight)
    assert stats[0].update_sq == 0 and stats[0].sign_flips == 0
    assert stats[1].update_sq > 0


@pytest.mark.parametrize("rule", ["fa", "usf"])
def test_probing_every_step_does_not_change_the_trajectory(tmp_path, tiny_config, rule):
    """Probed steps take the measured step, unprobed ones torch's (FA) or the same compiled
    step without its sums (usf, which renews B in it): the same losses bitwise."""
    from dynalign import open_run
    from dynalign.record import record

    losses = []
    for every in (1, 0):
        cfg = tiny_config(**{"rule.name": rule, "probes.every": every})
        record(cfg, tmp_path / f"{every}.zarr", progress=False)
        losses.append(open_run(tmp_path / f"{every}.zarr")["steps"].ds.loss.values)
    np.testing.assert_array_equal(losses[0], losses[1])
