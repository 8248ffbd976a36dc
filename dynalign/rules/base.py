"""What a learning rule is to the trainer: the owner of every feedback tensor B of a model.

A rule creates B (``attach``), keeps it consistent with W when something outside training
changes W (``refresh``: a sign constraint set at construction), updates it after each optimiser
step (``renewals``, B as an element-wise function of W that the optimiser's pass can write:
sign symmetry, Kolen-Pollack; ``after_step`` otherwise: weight mirrors), names the parameters the
optimiser trains (``trainable``: the head-only control) and hands over the random generators it
draws from during training, so that checkpoints hold them. The trainer calls these and never
names a rule. The weight update of every layer stays the local ``δᵀx``; what a rule decides is
the error a layer sends down (through B, or, for DFA, what a layer receives).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config, RuleConfig
from ..feedback import FeedbackLayer, feedback_layers
from ..renewal import Renewal, renew


class Rule:
    """Backpropagation's do-nothing defaults; every rule overrides what it needs."""

    name = "bp"

    def __init__(self, config: RuleConfig, seed: int):
        self.config = config
        self.seed = seed

    @classmethod
    def check(cls, config: Config) -> str | None:
        """A problem with ``config`` for this rule (the message of a ConfigError), or None."""
        return None

    def attach(
        self, model: nn.Module, generator: torch.Generator, input_shape: tuple[int, ...]
    ) -> None:
        """Create each layer's B (drawing from ``generator``, the model's init generator)."""
        for layer in feedback_layers(model).values():
            layer.feedback = None

    def refresh(self, layers: dict[str, FeedbackLayer]) -> None:
        """Make B agree with the current W again (W was changed outside an optimiser step)."""

    def renewals(
        self, layers: dict[str, FeedbackLayer], optimizer: torch.optim.Optimizer
    ) -> list[Renewal] | None:
        """Each layer's B after this step as an element-wise function of its W after it (in the
        order of ``layers``), which the optimiser's pass can write (``dynalign.renewal``); None
        where ``after_step`` renews B otherwise, or B stays. Advances what the rule draws or
        counts per step (brsf's keys, Kolen-Pollack's decay): a step asks for these once, and
        calls ``after_step`` only where there are none."""
        return None

    def after_step(
        self, layers: dict[str, FeedbackLayer], optimizer: torch.optim.Optimizer
    ) -> None:
        """Update B once the optimiser (and any sign constraint) has changed W: here, by
        writing the renewals, if the rule has any. (No ``no_grad`` decorator: on FA's and BP's
        every step it would cost more than the nothing done here.)"""
        renewals = self.renewals(layers, optimizer)
        if renewals is not None:
            with torch.no_grad():
                renew(renewals, (layer.weight for layer in layers.values()))

    def feedback_is_fixed(self) -> bool:
        """B never changes during training: only ``after_step`` and ``renewals`` change it
        then, and this rule keeps the do-nothing ones (a checkpoint writes such a B once per
        slot, not each time)."""
        return type(self).after_step is Rule.after_step and type(self).renewals is Rule.renewals

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the optimiser updates."""
        return list(model.parameters())

    def generators(self) -> dict[str, torch.Generator]:
        """Generators the rule draws from during training (saved in checkpoints)."""
        return {}


def output_layer(model: nn.Module) -> tuple[str, FeedbackLayer]:
    """The read-out: the last feedback layer a model registers (fc3, fc, rnn.U, ...)."""
    layers = feedback_layers(model)
    if not layers:
        raise ValueError("the model has no feedback layers for a learning rule to act on")
    name = list(layers)[-1]
    return name, layers[name]


def random_like(
    shape: tuple[int, ...] | torch.Size,
    bound: float,
    distribution: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """A float64 tensor uniform in ±bound, or normal with the same standard deviation."""
    if distribution == "uniform":
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return torch.randn(shape, generator=generator, dtype=torch.float64) * bound / 3**0.5


def param_group(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    """The optimiser's settings (lr, weight_decay, momentum, ...) for ``param``."""
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise ValueError("the optimiser does not train this parameter")
