"""Per-layer probes: what the rule's update looks like next to the true gradient.

Each probe declares the variables it writes (name, units, meaning) and computes them for every
layer from a ``StepContext`` the trainer fills on probe steps. Reductions run on the run's
device; each group of them (a layer's weight sweep, the three products behind an angle)
comes to the host in one transfer, where the angles are computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .store import Variable
from .weight_step import WeightStep, host_floats, weight_step


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle between two tensors seen as vectors, in degrees; NaN if either is zero.

    Three dot products (one pass each) give the cosine; the angle is atan2(|sin|, cos) in
    float64. Inputs that agree to float32 rounding are compared element by element, so
    bitwise-equal ones (BP, where both come from the same arithmetic) give exactly 0°, not
    the rounding residue of the dot products.
    """
    a, b = a.reshape(-1), b.reshape(-1)
    ab, aa, bb = host_floats(torch.dot(a, b), torch.dot(a, a), torch.dot(b, b))
    if ab > 0 and ab * ab > (1 - 1e-12) * aa * bb and (a is b or torch.equal(a, b)):
        return 0.0
    return angle_from_products(ab, aa, bb)


def angle_from_products(ab: float, aa: float, bb: float) -> float:
    """Degrees from ⟨a,b⟩, |a|², |b|²; NaN when either vector is zero."""
    if aa == 0 or bb == 0:
        return math.nan
    cos = min(1.0, max(-1.0, ab / math.sqrt(aa * bb)))
    return math.degrees(math.atan2(math.sqrt(1 - cos * cos), cos))


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
) -> float:
    """Angle between the rule's weight gradient and the true one, in degrees.

    A Linear layer's gradient is G = δᵀx over the R rows of a batch, so inner products of two
    such gradients need only the R×R Gram matrix K = x xᵀ: ⟨δ₁ᵀx, δ₂ᵀx⟩ = ⟨δ₁, K δ₂⟩. With
    few rows this is much cheaper than forming the true gradient, which the BP pass then skips
    (``bp_grad is None``).
    """
    if bp_grad is not None:
        return angle(rule_grad, bp_grad)
    if torch.equal(rule_delta, bp_delta):  # same error, same input: the same gradient
        return 0.0
    gram = x @ x.T  # BLAS in the run's precision; the sums over outputs in float64
    rule, bp = rule_delta.double().reshape(-1), bp_delta.double().reshape(-1)
    k_rule = (gram @ rule_delta).double().reshape(-1)
    k_bp = (gram @ bp_delta).double().reshape(-1)
    return angle_from_products(
        *host_floats(torch.dot(rule, k_bp), torch.dot(rule, k_rule), torch.dot(bp, k_bp))
    )


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

    def compute(self, ctx: StepContext, i: int) -> list[float]:
        """Values of ``variables`` for layer ``i``."""
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

    def compute(self, ctx: StepContext, i: int) -> list[float]:
        stats = ctx.weight_step(i)
        if stats.feedback_dot is None:  # BP: the feedback is W itself
            feedback = 0.0
        else:
            feedback = angle_from_products(stats.feedback_dot, stats.weight_sq, stats.feedback_sq)
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

    def compute(self, ctx: StepContext, i: int) -> list[float]:
        stats = ctx.weight_step(i)
        return [
            math.sqrt(stats.weight_sq),
            math.sqrt(stats.update_sq),
            stats.sign_flips,
            float(ctx.attempted[i]),
            stats.zeros / ctx.weights_after[i].numel(),
        ]


PROBES: tuple[Probe, ...] = (AngleProbe(), WeightChangeProbe())


def probe_variables() -> tuple[Variable, ...]:
    return tuple(v for p in PROBES for v in p.variables)


def run_probes(ctx: StepContext) -> dict[str, np.ndarray]:
    """Every probe for every layer: ``{variable: [value per layer]}``."""
    names = [v.name for v in probe_variables()]
    rows = [[v for p in PROBES for v in p.compute(ctx, i)] for i in range(len(ctx.names))]
    table = np.array(rows, dtype=np.float64).T  # (variables, layers)
    return dict(zip(names, table, strict=True))
