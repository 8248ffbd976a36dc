"""Model zoo: ``build(config, dataset)`` makes the network a run trains."""

from __future__ import annotations

import math

import torch

from ..config import Config
from .base import Network
from .mlp import MLP

__all__ = ["Network", "MLP", "build"]


def build(
    config: Config, input_shape: tuple[int, ...], n_outputs: int, generator: torch.Generator
) -> Network:
    """The network named by ``config.model.kind`` for inputs of ``input_shape`` (one sample)."""
    m = config.model
    if m.kind == "mlp":
        return MLP(
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
    if m.kind == "convnet":
        from .convnet import ConvNet

        return ConvNet(
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
    if m.kind == "rnn":
        from .rnn import RNN

        return RNN(input_shape, n_outputs, m.width, m.activation)
    if m.kind == "autoencoder":
        from .autoencoder import SparseAutoencoder

        return SparseAutoencoder(
            math.prod(input_shape), m.width, m.code_size, m.sparsity_target, m.sparsity_weight
        )
    raise ValueError(f"unknown model kind {m.kind!r}")
