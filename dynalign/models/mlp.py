"""Multilayer perceptron built from feedback layers: fc1 ... fcN (N = depth + 1)."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import ConfigError, _suggest
from ..feedback import Linear
from ..registry import ACTIVATIONS
from .base import Network

if TYPE_CHECKING:
    from ..config import ModelConfig


def make_activation(
    name: str,
    width: int,
    generator: torch.Generator | None = None,
    excitatory_fraction: float = 0.5,
) -> nn.Module:
    """One activation module by name, from ``dynalign.registry.ACTIVATIONS`` (fresh per layer:
    an activation with per-unit state, ``per_unit = True`` like Mixed-ReLU, is built as
    ``cls(width, excitatory_fraction, generator)``; any other takes no arguments)."""
    if name not in ACTIVATIONS:
        names = list(ACTIVATIONS.names())
        raise ConfigError(
            f"unknown activation {name!r}{_suggest(str(name), names)}; set model.activation to "
            f"one of {', '.join(names)}"
        )
    cls = ACTIVATIONS.load(name)
    if getattr(cls, "per_unit", False):
        return cls(width, excitatory_fraction, generator)
    return cls()


class MLP(Network):
    reads = ("depth", "width", "activation", "batch_norm", "bn_momentum", "excitatory_fraction")

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

    @classmethod
    def from_config(
        cls,
        model_config: ModelConfig,
        input_shape: tuple[int, ...],
        n_outputs: int,
        generator: torch.Generator | None = None,
    ) -> MLP:
        m = model_config
        return cls(
            math.prod(input_shape),
            n_outputs,
            m.depth,
            m.width,
            m.activation,
            m.batch_norm,
            m.bn_momentum,
            m.excitatory_fraction,
            generator,
        )

    @classmethod
    def size(
        cls, model_config: ModelConfig, input_shape: tuple[int, ...], n_outputs: int
    ) -> tuple[int, int]:
        m = model_config
        sizes = [math.prod(input_shape)] + [m.width] * m.depth + [n_outputs]
        weights = sum((a + 1) * b for a, b in pairwise(sizes))
        return weights, sum(sizes)

    @classmethod
    def what_to_lower(cls, model_config: ModelConfig) -> str:
        m = model_config
        return f"lower model.width (now {m.width}) or model.depth (now {m.depth})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.n_inputs)
        for module in self.children():
            x = module(x)
        return x
