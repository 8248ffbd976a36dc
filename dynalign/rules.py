"""Learning rules: each decides what feedback tensor B a layer sends its error through.

A rule only creates ``layer.feedback``; the local weight
update and everything else stays the same. Rules never touch the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .feedback import FeedbackLayer, feedback_layers

FEEDBACK_DISTRIBUTIONS = ("uniform", "normal")


@dataclass(frozen=True)
class Rule:
    """Backpropagation: no feedback tensor, the error travels back through W."""

    name: str = "bp"

    def attach(self, layer: FeedbackLayer, generator: torch.Generator) -> None:
        layer.feedback = None


@dataclass(frozen=True)
class FeedbackAlignment(Rule):
    """Lillicrap et al. (2016): B random and fixed for the whole run.

    ``scale`` multiplies the width of the forward weights' own init distribution, so the
    default (1.0, uniform) draws B exactly as W was drawn, independently.
    """

    name: str = "fa"
    distribution: str = "uniform"
    scale: float = 1.0

    def attach(self, layer: FeedbackLayer, generator: torch.Generator) -> None:
        w = layer.weight
        bound = layer.init_bound() * self.scale
        if self.distribution == "uniform":
            b = torch.rand(w.shape, generator=generator, dtype=torch.float64) * 2 - 1
            b = b * bound
        else:  # normal with the same standard deviation as the uniform init
            b = torch.randn(w.shape, generator=generator, dtype=torch.float64)
            b = b * bound / 3**0.5
        layer.feedback = b.to(dtype=w.dtype, device=w.device)


RULES = {"bp": Rule, "fa": FeedbackAlignment}


def make_rule(name: str, distribution: str = "uniform", scale: float = 1.0) -> Rule:
    if name == "bp":
        return Rule()
    if name == "fa":
        return FeedbackAlignment(distribution=distribution, scale=scale)
    raise ValueError(f"unknown rule {name!r}; choose one of {', '.join(RULES)}")


def attach_rule(model: torch.nn.Module, rule: Rule, generator: torch.Generator) -> None:
    for layer in feedback_layers(model).values():
        rule.attach(layer, generator)
