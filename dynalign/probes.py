"""Per-layer probes: what the rule's update looks like next to the true gradient.

Each probe declares the variables it writes (name, units, meaning) and computes them for every
layer from a ``StepContext`` the trainer fills on probe steps. All values of a step are computed
as tensors on the run's device and moved to the host once, so probing costs a few elementwise
passes over the weights and a single transfer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .store import Variable


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle between two tensors seen as vectors, in degrees; NaN if either is zero.

    Three dot products (one pass each) give the cosine; the angle is atan2(|sin|, cos) in
    float64. Inputs that agree to float32 rounding are compared element by element, so
    bitwise-equal ones (BP, where both come from the same arithmetic) give exactly 0°, not
    the rounding residue of the dot products.
    """
    a, b = a.reshape(-1), b.reshape(-1)
    ab, aa, bb = (torch.dot(a, b).double(), torch.dot(a, a).double(), torch.dot(b, b).double())
    if ab * ab > (1 - 1e-12) * aa * bb and ab > 0 and (a is b or torch.equal(a, b)):
        return torch.zeros((), dtype=torch.float64, device=a.device)
    return _angle_from_products(ab, aa, bb)


def _angle_from_products(ab: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
    """Degrees from ⟨a,b⟩, |a|², |b|² (float64); NaN when either vector is zero."""
    if aa == 0 or bb == 0:
        return torch.tensor(math.nan, dtype=torch.float64, device=ab.device)
    cos = (ab / torch.sqrt(aa * bb)).clamp(-1, 1)
    return torch.atan2(torch.sqrt(1 - cos * cos), cos) * (180 / math.pi)


def gram_is_cheaper(x: torch.Tensor, delta: torch.Tensor) -> bool:
    """Is the Gram form of ⟨G_rule, G_bp⟩ cheaper than forming G_bp = δᵀx (R rows)?"""
    rows, n_in, n_out = x.shape[0], x.shape[1], delta.shape[1]
    return delta.shape[0] == rows and rows * (n_in + n_out) < n_in * n_out


def update_angle(
    rule_grad: torch.Tensor,
    bp_grad: torch.Tensor | None,
    x: torch.Tensor | None,
    rule_delta: torch.Tensor,
    bp_delta: torch.Tensor,
) -> torch.Tensor:
    """Angle between the rule's weight gradient and the true one, in degrees.

    A Linear layer's gradient is G = δᵀx over the rows of a batch, so inner products of two
    such gradients need only the R×R Gram matrices: ⟨δ₁ᵀx, δ₂ᵀx⟩ = Σ (x xᵀ) ⊙ (δ₁ δ₂ᵀ).
    With few rows this is much cheaper than forming the true gradient, which the BP pass then
    skips (``bp_grad is None``).
    """
    if bp_grad is not None:
        return angle(rule_grad, bp_grad)
    if torch.equal(rule_delta, bp_delta):  # same error, same input: the same gradient
        return torch.zeros((), dtype=torch.float64, device=rule_grad.device)
    gram = (x @ x.T).double()  # R×R: BLAS in the run's precision, products summed in float64
    rb = (gram * (rule_delta @ bp_delta.T).double()).sum()
    bb = (gram * (bp_delta @ bp_delta.T).double()).sum()
    rr = (gram * (rule_delta @ rule_delta.T).double()).sum()
    return _angle_from_products(rb, rr, bb)


@dataclass
class StepContext:
    """What one probe step leaves behind, per layer, in the order of ``names``."""

    names: list[str]
    weights_before: list[torch.Tensor]  # a reused buffer: WeightChangeProbe consumes it
    weights_after: list[torch.Tensor]
    feedback: list[torch.Tensor | None]
    rule_grads: list[torch.Tensor]
    bp_grads: list[torch.Tensor | None]  # None: not formed, see ``update_angle``
    rule_deltas: list[torch.Tensor]  # error at the layer's output, one row per sample
    bp_deltas: list[torch.Tensor]
    inputs: list[torch.Tensor | None]  # the layer's input rows (Linear layers)
    attempted: list[torch.Tensor | int]
    _weight_sq: dict[int, torch.Tensor] = field(default_factory=dict)

    def weight_sq_norm(self, i: int) -> torch.Tensor:
        """|W|² after the step (float64), computed once for the probes that share it."""
        if i not in self._weight_sq:
            w = self.weights_after[i].reshape(-1)
            self._weight_sq[i] = torch.dot(w, w).double()
        return self._weight_sq[i]


class Probe:
    variables: tuple[Variable, ...] = ()

    def compute(self, ctx: StepContext, i: int) -> list[torch.Tensor]:
        """Values of ``variables`` for layer ``i`` (0-d tensors)."""
        raise NotImplementedError


class AngleProbe(Probe):
    variables = (
        Variable(
            "update_angle",
            True,
            "degree",
            "angle between the rule's weight update and the backprop gradient",
        ),
        Variable(
            "delta_angle",
            True,
            "degree",
            "angle between the error at the layer's output under the rule and under backprop",
        ),
        Variable("feedback_angle", True, "degree", "angle between forward weight W and feedback B"),
    )

    def compute(self, ctx: StepContext, i: int) -> list[torch.Tensor]:
        w, b = ctx.weights_after[i], ctx.feedback[i]
        if b is None:  # BP: the feedback is W itself
            feedback = torch.zeros((), dtype=torch.float64, device=w.device)
        else:
            wb = torch.dot(w.reshape(-1), b.reshape(-1)).double()
            feedback = _angle_from_products(
                wb, ctx.weight_sq_norm(i), torch.dot(b.reshape(-1), b.reshape(-1)).double()
            )
        return [
            update_angle(
                ctx.rule_grads[i],
                ctx.bp_grads[i],
                ctx.inputs[i],
                ctx.rule_deltas[i],
                ctx.bp_deltas[i],
            ),
            angle(ctx.rule_deltas[i], ctx.bp_deltas[i]),
            feedback,
        ]


class WeightChangeProbe(Probe):
    """How W moved in the step: norms, sign changes, zeros.

    The weights from before the step live in a buffer the trainer reuses, so this probe may
    overwrite it: it is the last reader. Each quantity costs one pass over the weights.
    """

    variables = (
        Variable("weight_norm", True, "1", "Frobenius norm of W after the step"),
        Variable("update_norm", True, "1", "Frobenius norm of the change applied to W in the step"),
        Variable("sign_flips", True, "count", "weights whose sign changed in the step"),
        Variable(
            "attempted_flips",
            True,
            "count",
            "weights a sign constraint stopped at zero in the step",
        ),
        Variable("zeroed_fraction", True, "1", "fraction of weights exactly zero after the step"),
    )

    def compute(self, ctx: StepContext, i: int) -> list[torch.Tensor]:
        before, after = ctx.weights_before[i], ctx.weights_after[i]
        flips, zeros = sign_counts(before, after)
        update = torch.linalg.vector_norm(before.sub_(after))  # in place: before is scratch now
        attempted = torch.as_tensor(ctx.attempted[i], device=after.device)
        zeroed = zeros.to(after.device) / after.numel()
        return [ctx.weight_sq_norm(i).sqrt(), update, flips.to(after.device), attempted, zeroed]


def sign_counts(before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights whose sign changed (strictly: one side negative, the other positive) and
    weights exactly zero after, as 0-d int64 tensors.

    On the CPU numpy does it: its vectorised comparisons and counts are several times faster
    than torch's boolean kernels, and this runs over every weight on every probe step.
    """
    if after.device.type == "cpu" and after.dtype in (torch.float32, torch.float64):
        b, a = before.detach().numpy(), after.detach().numpy()
        flips = np.count_nonzero(np.less(np.multiply(b, a), 0))
        zeros = np.count_nonzero(np.equal(a, 0))
        return torch.tensor(flips), torch.tensor(zeros)
    return torch.count_nonzero(before * after < 0), after.numel() - torch.count_nonzero(after)


PROBES: tuple[Probe, ...] = (AngleProbe(), WeightChangeProbe())


def probe_variables() -> tuple[Variable, ...]:
    return tuple(v for p in PROBES for v in p.variables)


def run_probes(ctx: StepContext) -> dict[str, list[float]]:
    """Every probe for every layer: ``{variable: [value per layer]}`` on the host."""
    names = [v.name for v in probe_variables()]
    rows = []
    for i in range(len(ctx.names)):
        rows.append(torch.stack([v.double() for p in PROBES for v in p.compute(ctx, i)]))
    table = torch.stack(rows, dim=1).cpu().numpy()  # (variables, layers): one transfer
    return dict(zip(names, table, strict=True))
