"""Kolen-Pollack (as in Akrout et al. 2019): B receives the same update as W, and both decay
with the same weight decay, so their difference shrinks by (1 - lr·weight_decay) every step
and B converges to W.

The rule keeps D = B - W (a buffer, so checkpoints hold it). After each step D decays and
B = W + D: under plain SGD that is exactly ΔB = -lr·(G + weight_decay·B), the update W gets
with B in W's place; with momentum or Adam, B moves by W's whole step and the difference decays.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..feedback import FeedbackLayer, feedback_layers
from .base import step_size
from .fa import FeedbackAlignment


class KolenPollack(FeedbackAlignment):
    name = "kp"

    @classmethod
    def check(cls, config: Config) -> str | None:
        if config.train.weight_decay <= 0:
            return (
                "rule.name=kp needs train.weight_decay > 0: without decay B - W never shrinks "
                "and B does not converge to W; set e.g. train.weight_decay=0.001"
            )
        return None

    def attach(
        self, model: nn.Module, generator: torch.Generator, input_shape: tuple[int, ...]
    ) -> None:
        super().attach(model, generator, input_shape)  # B starts as FA's random B
        for layer in feedback_layers(model).values():
            layer.register_buffer("feedback_offset", layer.feedback - layer.weight.detach())

    @torch.no_grad()
    def refresh(self, layers: dict[str, FeedbackLayer]) -> None:
        for layer in layers.values():
            layer.feedback.copy_(layer.weight).add_(layer.feedback_offset)

    @torch.no_grad()
    def after_step(self, layers, optimizer) -> None:
        for layer in layers.values():
            lr, decay = step_size(optimizer, layer.weight)
            layer.feedback_offset.mul_(1.0 - lr * decay)
        self.refresh(layers)
