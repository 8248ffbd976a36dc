"""Multilayer perceptron built from feedback layers: fc1 ... fcN (N = depth + 1)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError
from ..feedback import Linear
from .base import Network


def make_activation(
    name: str,
    width: int,
    generator: torch.Generator | None = None,
    excitatory_fraction: float = 0.5,
) -> nn.Module:
    """One activation module by name (fresh per layer: Mixed-ReLU has per-unit signs)."""
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "mixed_relu":
        from ..activations import MixedReLU

        return MixedReLU(width, excitatory_fraction, generator)
    raise ConfigError(
        f"unknown activation {name!r}; set model.activation to relu, tanh, sigmoid or mixed_relu"
    )


class MLP(Network):
    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        depth: int,
        width: int,
        activation: str = "relu",
        batch_norm: str = "none",
        bn_momentum: float = 0.1,
        excitatory_fraction: float = 0.5,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.n_inputs = n_inputs
        sizes = [n_inputs] + [width] * depth
        for i in range(depth):
            self.add_module(f"fc{i + 1}", Linear(sizes[i], sizes[i + 1]))
            if batch_norm != "none":
                from ..batchnorm import make_batch_norm

                self.add_module(f"bn{i + 1}", make_batch_norm(batch_norm, width, bn_momentum))
            self.add_module(
                f"act{i + 1}", make_activation(activation, width, generator, excitatory_fraction)
            )
        self.add_module(f"fc{depth + 1}", Linear(sizes[-1], n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.n_inputs)
        for module in self.children():
            x = module(x)
        return x
