"""Feedback alignment (Lillicrap et al. 2016): B random and fixed for the whole run."""

from __future__ import annotations

import torch
from torch import nn

from ..feedback import feedback_layers
from .base import Rule, random_like


class FeedbackAlignment(Rule):
    """B drawn once, independently of W, from W's own init distribution.

    ``rule.scale`` multiplies that distribution's width, and ``rule.distribution`` picks
    uniform or normal (with the same standard deviation).
    """

    name = "fa"

    def attach(
        self, model: nn.Module, generator: torch.Generator, input_shape: tuple[int, ...]
    ) -> None:
        for layer in feedback_layers(model).values():
            w = layer.weight
            bound = layer.init_bound() * self.config.scale
            b = random_like(w.shape, bound, self.config.distribution, generator)
            layer.feedback = b.to(dtype=w.dtype, device=w.device)
