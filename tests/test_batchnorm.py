"""Batch-norm variants checked against statistics computed by hand (float64)."""

from __future__ import annotations

import copy

import pytest
import torch

from dynalign.batchnorm import BATCH_NORM_KINDS, make_batch_norm
from dynalign.models.mlp import MLP

EPS = 1e-5
MOMENTUM = 0.3  # deliberately not torch's default 0.1
SHAPES = [(6, 3), (4, 3, 2, 3)]  # (N, C) and (N, C, H, W)


def _batches(shape, n=3, seed=0) -> list[torch.Tensor]:
    """Batches with different means and spreads, so stale statistics are visibly wrong."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=g, dtype=torch.float64) * (1 + k) + 2.0 * k for k in range(n)
    ]


def _per_channel(x: torch.Tensor) -> torch.Tensor:
    """(C, values) view of a (N, C, ...) tensor."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _mean_biased_unbiased(x: torch.Tensor):
    v = _per_channel(x)
    n = v.shape[1]
    mean = v.sum(1) / n
    ss = ((v - mean[:, None]) ** 2).sum(1)
    return mean, ss / n, ss / (n - 1)


def _running_history(batches, m=MOMENTUM):
    """Running (mean, var) before the first batch and after each one, by the momentum formula."""
    c = batches[0].shape[1]
    mean, var = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    history = [(mean, var)]
    for x in batches:
        b_mean, _, b_unbiased = _mean_biased_unbiased(x)
        mean, var = (1 - m) * mean + m * b_mean, (1 - m) * var + m * b_unbiased
        history.append((mean, var))
    return history


def _normalise(x, mean, var):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + EPS)


def _make(kind, c=3, m=MOMENTUM):
    return make_batch_norm(kind, c, m).double()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["standard", "noaffine"])
def test_batch_statistics_variants(kind, shape):
    bn = _make(kind, shape[1])
    if kind == "standard":
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
            bn.bias.copy_(torch.tensor([1.0, -3.0, 0.25]))
    for x in _batches(shape):
        mean, biased, _ = _mean_biased_unbiased(x)
        expected = _normalise(x, mean, biased)
        if kind == "standard":
            view = (1, -1) + (1,) * (x.dim() - 2)
            expected = expected * bn.weight.reshape(view) + bn.bias.reshape(view)
        torch.testing.assert_close(bn(x), expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind,offset", [("running_prev", 0), ("running_incl", 1)])
def test_running_variants_use_the_right_batches(kind, offset, shape):
    """Batch k is normalised with the running stats of batches < k (prev) or <= k (incl)."""
    bn = _make(kind, shape[1])
    batches = _batches(shape)
    history = _running_history(batches)
    for k, x in enumerate(batches):
        mean, var = history[k + offset]
        torch.testing.assert_close(bn(x), _normalise(x, mean, var))


@pytest.mark.parametrize("kind", BATCH_NORM_KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_running_estimates_follow_momentum_formula(kind, shape):
    bn = _make(kind, shape[1])
    assert torch.equal(bn.running_mean, torch.zeros(shape[1], dtype=torch.float64))
    assert torch.equal(bn.running_var, torch.ones(shape[1], dtype=torch.float64))
    batches = _batches(shape)
    for x in batches:
        bn(x)
    mean, var = _running_history(batches)[-1]
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)


@pytest.mark.parametrize("kind", BATCH_NORM_KINDS)
def test_momentum_changes_the_running_estimate(kind):
    batches = _batches((5, 3))
    for m in (0.05, 0.9):
        bn = _make(kind, m=m)
        for x in batches:
            bn(x)
        torch.testing.assert_close(bn.running_mean, _running_history(batches, m)[-1][0])


@pytest.mark.parametrize("kind", BATCH_NORM_KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_eval_uses_running_statistics_and_leaves_them_alone(kind, shape):
    bn = _make(kind, shape[1])
    batches = _batches(shape)
    for x in batches[:2]:
        bn(x)
    bn.eval()
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    out = bn(batches[2])
    expected = _normalise(batches[2], mean, var)
    if kind == "standard":  # gamma and beta are still at their initial 1 and 0
        torch.testing.assert_close(bn.weight, torch.ones(shape[1], dtype=torch.float64))
        torch.testing.assert_close(bn.bias, torch.zeros(shape[1], dtype=torch.float64))
    torch.testing.assert_close(out, expected)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    # a single sample is fine in evaluation
    assert bn(batches[2][:1]).shape == (1, *shape[1:])


def test_only_standard_has_learnable_parameters():
    shapes = {k: [tuple(p.shape) for p in _make(k).parameters()] for k in BATCH_NORM_KINDS}
    assert shapes == {
        "standard": [(3,), (3,)],
        "noaffine": [],
        "running_prev": [],
        "running_incl": [],
    }


@pytest.mark.parametrize("shape", SHAPES)
def test_running_incl_gradient_matches_finite_differences(shape):
    bn = _make("running_incl", shape[1])
    bn(_batches(shape, seed=1)[1])  # non-trivial running state to start from
    x = _batches(shape, seed=2)[0].requires_grad_()

    def fresh_forward(x):
        return copy.deepcopy(bn)(x)  # the same starting state for every evaluation

    assert torch.autograd.gradcheck(fresh_forward, (x,))


@pytest.mark.parametrize("shape", SHAPES)
def test_running_prev_gradient_is_a_constant_scale(shape):
    bn = _make("running_prev", shape[1])
    first, second = _batches(shape)[:2]
    bn(first)
    _, var = _running_history([first])[-1]
    x = second.clone().requires_grad_()
    grad_out = torch.randn_like(x)
    (grad_x,) = torch.autograd.grad(bn(x), (x,), grad_out)
    torch.testing.assert_close(grad_x, _normalise(grad_out, torch.zeros_like(var), var))


def test_running_incl_gradient_is_not_the_constant_scale():
    """The current batch's share of the statistics must carry gradient."""
    x = _batches((5, 3))[1].requires_grad_()
    grad_out = torch.randn_like(x)
    (grad_incl,) = torch.autograd.grad(_make("running_incl")(x), (x,), grad_out)
    _, var = _running_history([x.detach()])[-1]
    assert not torch.allclose(grad_incl, _normalise(grad_out, torch.zeros_like(var), var))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown batch norm 'batch'"):
        make_batch_norm("batch", 3, 0.1)
    with pytest.raises(ValueError, match="momentum"):
        make_batch_norm("standard", 3, 1.5)
    for kind in BATCH_NORM_KINDS:
        bn = _make(kind)
        with pytest.raises(ValueError, match=r"expects input of shape \(N, 3\)"):
            bn(torch.zeros(4, 5, dtype=torch.float64))
        with pytest.raises(ValueError, match="batch size of 2"):
            bn(torch.zeros(1, 3, dtype=torch.float64))


@pytest.mark.parametrize("kind", BATCH_NORM_KINDS)
def test_mlp_builds_each_variant(kind):
    torch.manual_seed(0)
    net = MLP(4, 2, depth=2, width=5, batch_norm=kind, bn_momentum=0.2)
    out = net(torch.randn(6, 4))
    out.sum().backward()
    assert out.shape == (6, 2) and net.bn1.momentum == 0.2
    assert net.fc1.weight.grad is not None
