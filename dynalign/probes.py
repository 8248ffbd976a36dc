"""Per-layer probes: what the rule's update looks like next to the true gradient.

Each probe declares the variables it writes (name, units, meaning) and computes them for every
layer from a ``StepContext`` the trainer fills on probe steps. All values of a step are computed
as tensors on the run's device and moved to the host once, so probing costs a few elementwise
passes over the weights and a single transfer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .store import Variable
from .weight_step import WeightStep, weight_step


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
    """Is the Gram form of ``update_angle`` cheaper than forming G_bp = δᵀx?

    With R rows, n_in inputs and n_out outputs the Gram form costs R²·(n_in + 2·n_out)
    multiply-adds and forming the gradient R·n_in·n_out.
    """
    rows, n_in, n_out = x.shape[0], x.shape[1], delta.shape[1]
    return delta.shape[0] == rows and rows * (n_in + 2 * n_out) < n_in * n_out


def update_angle(
    rule_grad: torch.Tensor,
    bp_grad: torch.Tensor | None,
    x: torch.Tensor | None,
    rule_delta: torch.Tensor,
    bp_delta: torch.Tensor,
) -> torch.Tensor:
    """Angle between the rule's weight gradient and the true one, in degrees.

    A Linear layer's gradient is G = δᵀx over the R rows of a batch, so inner products of two
    such gradients need only the R×R Gram matrix K = x xᵀ: ⟨δ₁ᵀx, δ₂ᵀx⟩ = ⟨δ₁, K δ₂⟩. With
    few rows this is much cheaper than forming the true gradient, which the BP pass then skips
    (``bp_grad is None``).
    """
    if bp_grad is not None:
        return angle(rule_grad, bp_grad)
    if torch.equal(rule_delta, bp_delta):  # same error, same input: the same gradient
        return torch.zeros((), dtype=torch.float64, device=rule_grad.device)
    gram = x @ x.T  # BLAS in the run's precision; the sums over outputs in float64
    rule, bp = rule_delta.double().reshape(-1), bp_delta.double().reshape(-1)
    k_rule = (gram @ rule_delta).double().reshape(-1)
    k_bp = (gram @ bp_delta).double().reshape(-1)
    rb, rr, bb = torch.dot(rule, k_bp), torch.dot(rule, k_rule), torch.dot(bp, k_bp)
    return _angle_from_products(rb, rr, bb)


@dataclass
class StepContext:
    """What one probe step leaves behind, per layer, in the order of ``names``."""

    names: list[str]
    weights_before: list[torch.Tensor]  # a buffer the trainer reuses from step to step
    weights_after: list[torch.Tensor]
    feedback: list[torch.Tensor | None]
    rule_grads: list[torch.Tensor]
    bp_grads: list[torch.Tensor | None]  # None: not formed, see ``update_angle``
    rule_deltas: list[torch.Tensor]  # error at the layer's output, one row per sample
    bp_deltas: list[torch.Tensor]
    inputs: list[torch.Tensor | None]  # the layer's input rows (Linear layers)
    attempted: list[torch.Tensor | int]
    _weight_steps: dict[int, WeightStep] = field(default_factory=dict)

    def weight_step(self, i: int) -> WeightStep:
        """Layer ``i``'s reductions over W before, W after and B: one sweep, shared by probes."""
        if i not in self._weight_steps:
            self._weight_steps[i] = weight_step(
                self.weights_before[i], self.weights_after[i], self.feedback[i]
            )
        return self._weight_steps[i]


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
        stats = ctx.weight_step(i)
        if stats.feedback_dot is None:  # BP: the feedback is W itself
            feedback = torch.zeros((), dtype=torch.float64, device=stats.weight_sq.device)
        else:
            feedback = _angle_from_products(stats.feedback_dot, stats.weight_sq, stats.feedback_sq)
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
    """How W moved in the step: norms, sign changes, zeros (see ``weight_step``)."""

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
        stats = ctx.weight_step(i)
        device = stats.weight_sq.device
        attempted = torch.as_tensor(ctx.attempted[i], device=device)
        zeroed = stats.zeros / ctx.weights_after[i].numel()
        return [stats.weight_sq.sqrt(), stats.update_sq.sqrt(), stats.sign_flips, attempted, zeroed]


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
