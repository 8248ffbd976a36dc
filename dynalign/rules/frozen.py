"""The head-only control: only the output layer learns (Hao, Wan & Zhai 2026 ask every rule
to beat it; one that does not assigns no credit to its hidden layers).

The read-out's B is zero, so no error reaches the layers below and their weight updates are
zero (their update angles NaN); the optimiser holds only the read-out's parameters, so weight
decay leaves the rest alone too. Batch-norm running statistics still follow the data.
"""

from __future__ import annotations

import torch
from torch import nn

from ..feedback import feedback_layers
from .base import Rule, output_layer


class OutputOnly(Rule):
    name = "frozen"

    def attach(
        self, model: nn.Module, generator: torch.Generator, input_shape: tuple[int, ...]
    ) -> None:
        _, readout = output_layer(model)
        for layer in feedback_layers(model).values():
            layer.feedback = torch.zeros_like(layer.weight.detach()) if layer is readout else None

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        return list(output_layer(model)[1].parameters())
