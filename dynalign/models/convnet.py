"""Convolutional network built from feedback layers: conv blocks, then a linear read-out.

Block i is ``conv{i}`` (padding ``kernel_size // 2``) -> ``bn{i}`` (unless batch_norm is
"none") -> ``act{i}`` -> ``pool{i}`` (2x2 max pool); the flattened features feed ``fc``.
Probes record per feedback layer by module path, so the names ``conv1, conv2, ..., fc`` are
part of the store's contract.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..conv import Conv2d
from ..feedback import Linear
from .base import Network
from .mlp import make_activation


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of one sample: a (H, W) shape is a single-channel image."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"a ConvNet needs image inputs of shape (C, H, W) or (H, W), got {input_shape}; "
            "use model.kind=mlp for flat inputs"
        )
    return shape  # type: ignore[return-value]


class ConvNet(Network):
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
        if not channels:
            raise ValueError("a ConvNet needs at least one channel block, e.g. channels=[16, 32]")
        self.input_shape = image_shape(input_shape)
        in_channels, height, width = self.input_shape
        padding = kernel_size // 2
        self.block_names: list[str] = []
        for i, out_channels in enumerate(channels, start=1):
            # a 2x2 max pool halves (rounding down) what the convolution leaves
            height = (height + 2 * padding - kernel_size + 1) // 2
            width = (width + 2 * padding - kernel_size + 1) // 2
            if height < 1 or width < 1:
                raise ValueError(
                    f"ConvNet block {i} would shrink the {self.input_shape[1]}x"
                    f"{self.input_shape[2]} image below 1x1; use fewer channel blocks "
                    f"(model.channels has {len(channels)})"
                )
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
                self.block_names.append(name)
            in_channels = out_channels
        self.n_features = in_channels * height * width
        self.fc = Linear(self.n_features, n_outputs)

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
