"""The optimiser's step with the weight sweep in the same pass over memory.

Under SGD on the CPU a probed step takes the compiled update of this module with the sums
below, and an unprobed step takes it without them (the sums' float64 arithmetic, with the
tensors still in cache from the backward pass, would set the loop's pace), writing a renewed B
in the same pass where the rule has one. torch's CPU step makes three passes (the velocity
scaled, the gradient added to it, W stepped); the compiled update makes one: on a 512×3072
layer with caches cold, 1.5 against 2.4 ms, and in ``benchmarks/step_time.py`` FA's unprobed
step went from 1.07-1.14 to 0.97 of plain torch's.

A probe step needs, for every weight tensor, the reductions of ``dynalign.weight_step`` over W
before and after the step (and B). Done around torch's step, that takes a copy of W before it
(W read, the copy written) and a sweep after it (W, the copy and B read), on top of the step's
own pass (W, the velocity and the gradient read, W and the velocity written): for a 3×512 net
on 3072 inputs some 45 MB of extra traffic a step, as much time as the step itself. For SGD on
the CPU a compiled loop (``dynalign.kernels.sgd_sweep``) does the update and the sums in one
pass, from values it holds in registers anyway; it is faster than torch's step alone.

The update is torch's, operation for operation, so W and the velocity come out bitwise as
torch's ``SGD.step`` leaves them: trajectories do not depend on which steps are probed. That
rests on how torch's CPU kernels round (fused multiply-adds where the CPU has them), so it is
checked once per process and dtype against torch's own step, and where they differ the trainer
copies W and steps as before. Anything else also takes that way: Adam, Nesterov, dampening, a
device other than the CPU, a weight without its velocity yet (SGD creates it on the first
step), or a sign constraint (it changes W after the step; the trainer decides). A rule changes
B, never W, so W measured here is W as the probes see it. A B the rule renews from W element by
element (sign symmetry, Kolen-Pollack: ``dynalign.renewal``) is written in this pass too, and
measured as written, which spares the renewal a pass of its own over W. A B renewed otherwise
(weight mirror) is measured after the rule's ``after_step`` (``with_feedback``: one pass over
W and B).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .renewal import Renewal
from .weight_step import WeightStep, weight_step


def measured_step(
    optimizer: torch.optim.Optimizer,
    weights: list[torch.Tensor],
    feedback: list[torch.Tensor | None],
    renewals: list[Renewal] | None = None,
    measure: bool = True,
) -> list[WeightStep | None] | None:
    """Take ``optimizer.step()`` and return each weight's ``WeightStep``, measured in the
    update's pass; B from ``feedback`` (None: no B, or a B that is not W's shape, or one the
    rule renews after the step). ``renewals``: each B after the step as a function of W,
    written in the same pass and measured as B (``dynalign.renewal``). ``measure`` False: the
    step (and renewals) alone, each weight's entry None. Returns None without stepping (or
    renewing) where this cannot be done; the caller then steps as before."""
    renewals = renewals or [None] * len(weights)
    groups = _groups(optimizer, weights)
    if groups is None or not all(
        _fits(optimizer, w, b, g, r)
        for w, b, g, r in zip(weights, feedback, groups, renewals, strict=True)
    ):
        return None
    _step_others(optimizer, weights)
    return [
        _step(optimizer, *args, measure)
        for args in zip(weights, feedback, groups, renewals, strict=True)
    ]


def _step_others(optimizer: torch.optim.Optimizer, weights: list[torch.Tensor]) -> None:
    """Every other parameter's step (biases, batch norm): by the compiled update where each
    fits it, else by torch's step. Right after a backward pass has streamed megabytes through
    the caches, torch's step (a dozen Python frames and a few small tensor operations per
    parameter) took 200 µs for four biases that it steps in 40 µs warm; the compiled
    update's calls touch far less."""
    mine = {id(w) for w in weights}
    others = [
        (p, group)
        for group in optimizer.param_groups
        for p in group["params"]
        if id(p) not in mine and p.grad is not None
    ]
    if all(_plain(group) and _fits(optimizer, p, None, group, None) for p, group in others):
        for p, group in others:
            _step(optimizer, p, None, group, None, measure=False)
        return
    grads = [w.grad for w in weights]
    try:
        for w in weights:  # torch's step skips them: the caller's loop updates them
            w.grad = None
        optimizer.step()
    finally:
        for w, grad in zip(weights, grads, strict=True):
            w.grad = grad


def with_feedback(stats: WeightStep, weight: torch.Tensor, feedback: torch.Tensor) -> WeightStep:
    """``stats`` measured without B, with ⟨W, B⟩ and |B|² of B as it is now (a rule that renews
    B after the step)."""
    now = weight_step(weight, weight, feedback)
    return dataclasses.replace(stats, feedback_dot=now.feedback_dot, feedback_sq=now.feedback_sq)


def _groups(optimizer, weights) -> list[dict | None] | None:
    """Each weight's parameter group (None: the optimiser does not train it), or None if the
    optimiser is not plain SGD."""
    if type(optimizer) is not torch.optim.SGD:
        return None
    owner = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    groups = [owner.get(id(w)) for w in weights]
    if not all(_plain(group) for group in filter(None, groups)):
        return None
    return groups


def _plain(group: dict) -> bool:
    """Is this SGD group's update the one the compiled loop does (momentum and weight decay,
    nothing else)?"""
    return not (
        group["nesterov"]
        or group["dampening"] != 0
        or group["maximize"]
        or group.get("differentiable")
        or group.get("foreach")
        or group.get("fused")
        or isinstance(group["lr"], torch.Tensor)
    )


def _fits(optimizer, weight, feedback, group, renewal) -> bool:
    """Whether the compiled loop can step (or, untrained, measure) this weight."""
    tensors = [weight]
    if group is not None and weight.grad is not None:
        tensors.append(weight.grad)
        if group["momentum"] != 0:
            velocity = optimizer.state.get(weight, {}).get("momentum_buffer")
            if velocity is None:  # the first step creates it
                return False
            tensors.append(velocity)
    if feedback is not None:
        tensors.append(feedback)
    if renewal is not None:
        renewal.check(weight)
        if feedback is not None or not renewal.compiled(weight):
            return False
    dtype, shape = weight.dtype, weight.shape
    if dtype not in (torch.float32, torch.float64):
        return False
    for t in tensors:  # a loop, not all() over a generator: it runs for every tensor every step
        if not (
            t.device.type == "cpu"
            and t.dtype == dtype
            and t.layout == torch.strided
            and t.is_contiguous()
            and t.shape == shape
        ):
            return False
    return _agrees_with_torch(dtype)


def _step(optimizer, weight, feedback, group, renewal, measure) -> WeightStep | None:
    if group is None or weight.grad is None:  # not trained on this step: W stays as it is
        if renewal is not None:
            renewal.apply(weight.detach())
            feedback = renewal.feedback
        return weight_step(weight, weight, feedback) if measure else None
    from . import kernels  # imports numba: on first use, not at the CLI's start

    kind = np.float64 if weight.dtype == torch.float64 else np.float32
    velocity = None
    if group["momentum"] != 0:
        velocity = optimizer.state[weight]["momentum_buffer"]
    w = weight.detach()
    values = kernels.sgd_sweep(
        w.numpy().reshape(-1),
        None if velocity is None else velocity.numpy().reshape(-1),
        weight.grad.numpy().reshape(-1),
        None if feedback is None else feedback.numpy().reshape(-1),
        kind(group["lr"]),
        kind(group["momentum"]),
        kind(group["weight_decay"]),
        torch.get_num_threads(),
        kernels.NO_RENEWAL if renewal is None else renewal.kernel_args(),
        measure,
    )
    # written through numpy: tell autograd that they changed, as torch's in-place step does
    torch.autograd.graph.increment_version(w)
    if velocity is not None:
        torch.autograd.graph.increment_version(velocity)
    if not measure:
        return None
    sums = values[:6] if feedback is not None or renewal is not None else (*values[:4], None, None)
    return WeightStep.from_sums(sums, gradient_sq=values[6])


_AGREES: dict[torch.dtype, bool] = {}


def _agrees_with_torch(dtype: torch.dtype) -> bool:
    """Whether the compiled update leaves W and the velocity bitwise as torch's SGD does, on
    this machine and in this dtype: three steps of a tensor with full vectors and a tail, with
    and without momentum and weight decay, from the same state, by the loop with its sums and
    by the one without."""
    if dtype not in _AGREES:
        from . import kernels

        kind = np.float64 if dtype == torch.float64 else np.float32
        g = torch.Generator().manual_seed(0)
        agrees = True
        for momentum, decay in ((0.9, 0.01), (0.0, 0.01), (0.9, 0.0)):
            start = torch.randn(3 * 64 + 5, generator=g, dtype=dtype)
            param = torch.nn.Parameter(start.clone())
            sgd = torch.optim.SGD([param], lr=0.1, momentum=momentum, weight_decay=decay)
            param.grad = torch.randn(start.shape, generator=g, dtype=dtype)
            sgd.step()  # creates the velocity
            velocity = sgd.state[param].get("momentum_buffer")
            copies = {  # the loop with its sums and without them: two compiled loops
                measure: (param.detach().clone(), None if velocity is None else velocity.clone())
                for measure in (True, False)
            }
            for _ in range(3):
                grad = torch.randn(start.shape, generator=g, dtype=dtype)
                param.grad = grad.clone()
                sgd.step()
                for measure, (w, v) in copies.items():
                    kernels.sgd_sweep(
                        w.numpy(), None if v is None else v.numpy(), grad.numpy(), None,
                        kind(0.1), kind(momentum), kind(decay), 1, measure=measure,
                    )  # fmt: skip
            for w, v in copies.values():
                agrees &= torch.equal(w, param.detach())
                if v is not None:
                    agrees &= torch.equal(v, sgd.state[param]["momentum_buffer"])
        _AGREES[dtype] = bool(agrees)
    return _AGREES[dtype]
