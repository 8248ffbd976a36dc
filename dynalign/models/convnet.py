"""Convolutional network built from feedback layers: conv blocks, then a linear read-out.

Block i is ``conv{i}`` (padding ``kernel_size // 2``) -> ``bn{i}`` (unless batch_norm is
"none") -> ``act{i}`` -> ``pool{i}`` (2x2 max pool); the flattened features feed ``fc``. (A
ReLU runs after the pool, which gives the same values and gradients: ``running_order``.)
Probes record per feedback layer by module path, so the names ``conv1, conv2, ..., fc`` are
part of the store's contract.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import ConfigError
from ..conv import Conv2d
from ..feedback import Linear
from .base import Network
from .mlp import make_activation

if TYPE_CHECKING:
    from ..config import ModelConfig


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of one sample: a (H, W) shape is a single-channel image."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
            f"a ConvNet needs image inputs of shape (C, H, W) or (H, W), got {input_shape}; "
            "use model.kind=mlp for flat inputs"
        )
    return shape  # type: ignore[return-value]


def block_shapes(
    input_shape: tuple[int, ...], channels: list[int], kernel_size: int
) -> list[tuple[int, int, int]]:
    """(C, H, W) of the input image and after each block, or ConfigError for a geometry that
    cannot work; called before any layer is built, so nothing is allocated for a bad one."""
    if not channels:
        raise ConfigError("a ConvNet needs at least one channel block; set model.channels=[16, 32]")
    shape = image_shape(input_shape)
    _, height, width = shape
    if not 1 <= kernel_size <= min(height, width):
        raise ConfigError(
            f"model.kernel_size={kernel_size} does not fit the {height}x{width} input images; "
            f"set model.kernel_size between 1 and {min(height, width)}, e.g. 3"
        )
    padding = kernel_size // 2
    shapes = [shape]
    for i, out_channels in enumerate(channels, start=1):
        # a 2x2 max pool halves (rounding down) what the convolution leaves
        height = (height + 2 * padding - kernel_size + 1) // 2
        width = (width + 2 * padding - kernel_size + 1) // 2
        if height < 1 or width < 1:
            raise ConfigError(
                f"ConvNet block {i} would shrink the {shape[1]}x{shape[2]} image below 1x1; "
                f"use fewer channel blocks (model.channels has {len(channels)})"
            )
        shapes.append((out_channels, height, width))
    return shapes


def running_order(names: list[str], activation: nn.Module) -> list[str]:
    """A block's modules (``[conv, (bn,) act, pool]``) in the order its forward pass runs
    them: as named, except that a ReLU runs after the max pool, where it and its backward pass
    see a quarter of the values. The two commute exactly: relu(max_pool(z)) =
    max_pool(relu(z)) in value and in gradient, since a ReLU keeps every positive value as it
    is (a window's maximum and where it lies are the same either way) and a window with none
    positive gives zero and a zero gradient either way. Mixed-ReLU's inhibitory units
    (min(z, 0)) do not commute with a max; tanh and sigmoid are monotone but may round two
    inputs of a window to one output, and the pool would then pick another position for the
    gradient: they keep the order as named."""
    if type(activation) is not nn.ReLU:
        return names
    *before, act, pool = names
    return [*before, pool, act]


class ConvNet(Network):
    reads = (
        "channels",
        "kernel_size",
        "activation",
        "batch_norm",
        "bn_momentum",
        "excitatory_fraction",
    )

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_outputs: int,
        channels: list[int],
        kernel_size: int = 3,
        activation: str = "relu",
        batch_norm: str = "none",
        bn_momentum: float = 0.1,
        excitatory_fraction: float = 0.5,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        shapes = block_shapes(input_shape, channels, kernel_size)
        self.input_shape = shapes[0]
        in_channels = self.input_shape[0]
        padding = kernel_size // 2
        self.block_names: list[str] = []
        for i, out_channels in enumerate(channels, start=1):
            block = {f"conv{i}": Conv2d(in_channels, out_channels, kernel_size, padding=padding)}
            if batch_norm != "none":
                from ..batchnorm import make_batch_norm

                block[f"bn{i}"] = make_batch_norm(batch_norm, out_channels, bn_momentum)
            block[f"act{i}"] = make_activation(
                activation, out_channels, generator, excitatory_fraction
            )
            block[f"pool{i}"] = nn.MaxPool2d(2)
            for name, module in block.items():
                self.add_module(name, module)
            self.block_names += running_order(list(block), block[f"act{i}"])
            in_channels = out_channels
        self.n_features = math.prod(shapes[-1])
        self.fc = Linear(self.n_features, n_outputs)

    @classmethod
    def from_config(
        cls,
        model_config: ModelConfig,
        input_shape: tuple[int, ...],
        n_outputs: int,
        generator: torch.Generator | None = None,
    ) -> ConvNet:
        m = model_config
        return cls(
            input_shape,
            n_outputs,
            m.channels,
            m.kernel_size,
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
        shapes = block_shapes(input_shape, m.channels, m.kernel_size)
        weights, units = 0, math.prod(input_shape)
        for (c_in, h, w), (c_out, _, _) in pairwise(shapes):
            weights += (c_in * m.kernel_size**2 + 1) * c_out
            units += 2 * c_out * h * w  # the convolution's output, before the pool
        return weights + (math.prod(shapes[-1]) + 1) * n_outputs, units

    @classmethod
    def what_to_lower(cls, model_config: ModelConfig) -> str:
        return f"lower model.channels (now {model_config.channels}) or train.batch_size"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_pixels = math.prod(self.input_shape)
        if x.dim() == 2 and x.shape[1] == n_pixels:
            x = x.reshape(x.shape[0], *self.input_shape)
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"ConvNet expects input of shape (N, {', '.join(map(str, self.input_shape))}) "
                f"or (N, {n_pixels}), got {tuple(x.shape)}"
            )
        for name in self.block_names:
            x = getattr(self, name)(x)
        return self.fc(x.flatten(1))
