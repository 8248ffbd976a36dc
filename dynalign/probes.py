"""Probes: what a run records about each step, each one declaring its variables, its schedule
and what it needs from the step.

A probe's ``needs`` name what the trainer must do for it on a step where it is due:
``reference`` (the BP pass beside the rule's, see ``dynalign.reference``), ``outputs`` (each
layer's output kept from the forward pass), ``weights_before`` (W before the optimiser step: a
copy, or the reductions over it measured in the step's own pass). The recorder
(``dynalign.recorder``) merges the needs of the probes due on a step, so a step no probe needs
costs a plain training step. Per-layer reductions run on the run's device and come to the host
in one transfer per group; angles are computed in float64 (``dynalign.angles``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import schema
from .angles import (
    angle,
    angle_and_norms,
    angle_from_products,
    gram_angle_and_norms,
    gram_matrix,
)
from .measured_step import with_feedback
from .reference import Gradients
from .schema import Variable
from .weight_step import WeightStep, host_floats, norms, weight_step


@dataclass
class StepContext:
    """One step as the probes see it, per layer in the order of ``names``."""

    step: int
    names: list[str]
    weights: list[torch.Tensor]  # W after the step (and after any sign constraint)
    feedback: Sequence[torch.Tensor | None]  # B after the step (read: an owed renewal written)
    routed: list[bool]  # the layer's error does not come through B layer by layer (DFA)
    gradients: Gradients | None = None
    weights_before: list[torch.Tensor] | None = None  # a buffer the trainer reuses
    #: or the reductions already measured in the optimiser's pass (``dynalign.measured_step``),
    #: without B's where the rule renewed B after the step
    measured: list[WeightStep] | None = None
    constraint_counts: list | None = None  # per layer: crossed, pushed (see constraints)
    _weight_steps: dict[int, WeightStep] = field(default_factory=dict)

    def weight_step(self, i: int) -> WeightStep:
        """Layer ``i``'s reductions over W before, W after and B: one sweep, shared by probes."""
        if i not in self._weight_steps:
            b = self.feedback[i]
            b = b if b is not None and b.shape == self.weights[i].shape else None
            if self.measured is None:
                stats = weight_step(self.weights_before[i], self.weights[i], b)
            else:
                stats = self.measured[i]
                if b is not None and stats.feedback_dot is None:
                    stats = with_feedback(stats, self.weights[i], b)
            self._weight_steps[i] = stats
        return self._weight_steps[i]


class Probe:
    """Values of ``variables`` on the steps its schedule picks (every ``every`` steps, from 1)."""

    variables: tuple[Variable, ...] = ()
    needs: frozenset[str] = frozenset()

    def __init__(self, every: int):
        self.every = every

    def due(self, step: int) -> bool:
        return self.every > 0 and (step - 1) % self.every == 0

    def compute(self, ctx: StepContext) -> dict[str, np.ndarray]:
        """``{variable: value per layer}`` for a step where the probe is due."""
        rows = [self.layer(ctx, i) for i in range(len(ctx.names))]
        table = np.array(rows, dtype=np.float64).reshape(len(rows), -1).T
        return dict(zip((v.name for v in self.variables), table, strict=True))

    def layer(self, ctx: StepContext, i: int) -> list[float]:
        raise NotImplementedError


class ScalarProbe:
    """Every step: the minibatch's accuracy and the model's extra loss terms, fetched with the
    loss before the backward pass (the trainer records step, epoch, loss and learning rate
    itself: it needs the loss to stop a run that diverges). Their variables are the schema's
    step scalars and loss terms."""

    def __init__(self, loss_terms: tuple[str, ...] = ()):
        self.terms = loss_terms

    def tensors(
        self, model: torch.nn.Module, output: torch.Tensor, target: torch.Tensor, terms: dict
    ) -> tuple[list[torch.Tensor], int]:
        """The step's values as 0-d tensors, which the trainer brings to the host together
        with the loss (one transfer: on a GPU each one waits for the work queued before it),
        and the number of samples scored."""
        correct, scored = model.correct_count(output.detach(), target)
        return [correct, *(terms[term].detach() for term in self.terms)], scored

    def values(self, host: list[float], scored: int) -> dict[str, float]:
        """The row's values from what ``tensors`` gave, brought to the host."""
        correct, *terms = host
        return {
            "batch_accuracy": correct / scored if scored else math.nan,
            **dict(zip(self.terms, terms, strict=True)),
        }


class SnapshotProbe:
    """W and B of every layer on the schedule's steps (and, via ``final``, the last).

    ``steps`` is the set of steps to snapshot, or an int k for every k steps (0: only the
    final one); :mod:`dynalign.snapshot_schedule` works the set out from the config."""

    def __init__(self, steps: int | frozenset[int], layers: dict):
        self.steps, self.layers = steps, layers
        self.last = -1  # the step of the last snapshot (checkpoints keep it)
        self.previous = -1  # and of the one before it

    def due(self, step: int, final: bool = False) -> bool:
        if self.last == step:
            return False
        if final:
            return True
        if isinstance(self.steps, int):
            return self.steps > 0 and step % self.steps == 0
        return step in self.steps

    def take(self, writer, step: int) -> None:
        self.previous, self.last = self.last, step
        weights = {n: layer.weight.detach().cpu().numpy() for n, layer in self.layers.items()}
        feedback = {  # a fixed B only for the first snapshot (it is stored once)
            n: layer.feedback.cpu().numpy()
            for n, layer in self.layers.items()
            if layer.feedback is not None and writer.takes_feedback(n)
        }
        writer.snapshot(step, weights, feedback)


def snapshot_bytes(layers: dict, dtype: str, feedback_fixed: bool = False) -> tuple[int, int]:
    """Bytes each snapshot of every layer's W (and B) takes in ``dtype``, and bytes stored once:
    a B the rule never changes (``feedback_fixed``) is stored with the store, not per snapshot."""
    weights = sum(layer.weight.numel() for layer in layers.values())
    feedback = sum(
        layer.feedback.numel() for layer in layers.values() if layer.feedback is not None
    )
    size = np.dtype(dtype).itemsize
    if feedback_fixed:
        return weights * size, feedback * size
    return (weights + feedback) * size, 0


class ReconstructionProbe(SnapshotProbe):
    """An autoencoder's reconstructions of fixed probe inputs every ``every`` steps."""

    def __init__(self, every: int, model: torch.nn.Module, inputs: torch.Tensor):
        super().__init__(every, {})
        self.model, self.inputs = model, inputs

    def take(self, writer, step: int) -> None:
        self.last = step
        rec = self.model.reconstruct(self.inputs)
        writer.reconstruction(step, rec.reshape(len(rec), -1).cpu().numpy())


def _variables(*names: str) -> tuple[Variable, ...]:
    return tuple(schema.LAYER_VARIABLES[n] for n in names)


class AngleProbe(Probe):
    """The rule against BP: update and delta angles with their reference, and W against B."""

    variables = _variables(
        "update_angle", "delta_angle", "feedback_angle", "gradient_norm", "reference_valid"
    )
    needs = frozenset({"reference", "weights_before"})

    def layer(self, ctx: StepContext, i: int) -> list[float]:
        """The true gradient's norm decides whether the angles are defined: below ε·|W| (ε the
        machine epsilon of W's dtype) an update of that size would vanish in W's rounding, and
        the true gradient is mostly rounding error."""
        g = ctx.gradients
        floor = torch.finfo(ctx.weights[i].dtype).eps * math.sqrt(ctx.weight_step(i).weight_sq)
        if g.bp_grads[i] is not None:
            update, _, sq = angle_and_norms(g.rule_grads[i], g.bp_grads[i])
            norm = math.sqrt(sq)
        else:  # a Linear layer's gradients in their Gram form (see dynalign.reference)
            gram = gram_matrix(g.inputs[i])
            rule_sq = ctx.weight_step(i).gradient_sq  # summed in the optimiser's pass
            update, _, norm = gram_angle_and_norms(
                g.rule_deltas[i], g.bp_deltas[i], g.inputs[i], gram, rule_sq
            )
            if math.isnan(norm):  # equal deltas: the angle came without the norms
                d = g.bp_deltas[i]
                (sq,) = host_floats(torch.sum((gram @ d.to(gram.dtype)) * d, dtype=torch.float64))
                norm = math.sqrt(max(sq, 0.0))
        valid = norm > floor
        if not valid:
            update = math.nan
        delta = angle(g.rule_deltas[i], g.bp_deltas[i]) if valid else math.nan
        return [update, delta, self._feedback_angle(ctx, i), norm, float(valid)]

    @staticmethod
    def _feedback_angle(ctx: StepContext, i: int) -> float:
        b = ctx.feedback[i]
        if b is None and not ctx.routed[i]:  # the error goes down through W itself
            return 0.0
        stats = ctx.weight_step(i)
        if stats.feedback_dot is None:  # B has its own shape (DFA): no angle to W
            return math.nan
        return angle_from_products(stats.feedback_dot, stats.weight_sq, stats.feedback_sq)


class WeightChangeProbe(Probe):
    """How W moved in the step: norms, sign changes, zeros (see ``weight_step``)."""

    variables = _variables("weight_norm", "update_norm", "sign_flips", "zeroed_fraction")
    needs = frozenset({"weights_before"})

    def layer(self, ctx: StepContext, i: int) -> list[float]:
        stats = ctx.weight_step(i)
        return [
            math.sqrt(stats.weight_sq),
            math.sqrt(stats.update_sq),
            stats.sign_flips,
            stats.zeros / ctx.weights[i].numel(),
        ]


class ConstraintProbe(Probe):
    """What a sign constraint clipped in the step (0 where there is none)."""

    variables = _variables("attempted_flips", "zero_crossings", "zero_pushes")

    def compute(self, ctx: StepContext) -> dict[str, np.ndarray]:
        n = len(ctx.names)
        if ctx.constraint_counts is None:
            return {v.name: np.zeros(n) for v in self.variables}
        crossed = torch.stack([c.crossed for c in ctx.constraint_counts])
        pushed = torch.stack([c.pushed for c in ctx.constraint_counts])
        both = torch.stack([crossed, pushed]).to(torch.float64).cpu().numpy()
        return {
            "attempted_flips": both.sum(0),
            "zero_crossings": both[0],
            "zero_pushes": both[1],
        }


class ActivationProbe(Probe):
    """The scale of each layer's output (does it stay stable across depth?)."""

    variables = _variables("activation_rms")
    needs = frozenset({"outputs"})

    def compute(self, ctx: StepContext) -> dict[str, np.ndarray]:
        outputs = ctx.gradients.outputs
        sizes = [max(o.numel(), 1) for o in outputs]
        return {"activation_rms": np.array(norms(*outputs)) / np.sqrt(sizes)}


def step_probes(every: int) -> tuple[Probe, ...]:
    """The per-step probes of a run, each every ``every`` steps (``probes.every``)."""
    return (
        AngleProbe(every),
        WeightChangeProbe(every),
        ConstraintProbe(every),
        ActivationProbe(every),
    )


def probe_variables() -> tuple[Variable, ...]:
    """Every per-layer variable the step probes write, in store order."""
    names = {v.name for p in step_probes(1) for v in p.variables}
    return tuple(v for v in schema.LAYER_VARIABLES.values() if v.name in names)
