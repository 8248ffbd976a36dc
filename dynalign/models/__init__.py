"""Model zoo: ``build(config, dataset)`` makes the network a run trains."""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from ..config import Config, ConfigError
from ..memory import too_large
from .base import Network
from .mlp import MLP

__all__ = ["Network", "MLP", "build", "check_fits", "estimate_bytes"]

#: float32 copies of the weights a run holds: W, its gradient, the true gradient of a probe
#: step, W before the step, a host snapshot; FA adds B, the optimiser its state
WEIGHT_COPIES = 5
#: float32 copies of each unit's activity per sample: output, captured output, two error signals
ACTIVATION_COPIES = 4


def _layers(config: Config, input_shape: tuple[int, ...], n_outputs: int) -> tuple[int, int]:
    """(weights, units per sample) of the model ``config`` asks for: what memory scales with."""
    m = config.model
    n_in = math.prod(input_shape)
    if m.kind == "mlp":
        sizes = [n_in] + [m.width] * m.depth + [n_outputs]
        weights = sum((a + 1) * b for a, b in pairwise(sizes))
        return weights, sum(sizes)
    if m.kind == "convnet":
        from .convnet import block_shapes

        shapes = block_shapes(input_shape, m.channels, m.kernel_size)
        weights, units = 0, n_in
        for (c_in, h, w), (c_out, _, _) in pairwise(shapes):
            weights += (c_in * m.kernel_size**2 + 1) * c_out
            units += 2 * c_out * h * w  # the convolution's output, before the pool
        return weights + (math.prod(shapes[-1]) + 1) * n_outputs, units
    if m.kind == "rnn":
        steps = input_shape[0] if len(input_shape) == 1 else input_shape[-2]
        features = n_outputs if len(input_shape) == 1 else n_in // max(steps, 1)
        weights = (features + 1) * m.width + m.width**2 + (m.width + 1) * n_outputs
        return weights, steps * (features + m.width + n_outputs)
    sizes = [n_in, m.width, m.code_size, n_in]  # autoencoder
    weights = sum((a + 1) * b for a, b in pairwise(sizes))
    return weights, sum(sizes)


def estimate_bytes(config: Config, input_shape: tuple[int, ...], n_outputs: int) -> int:
    """Rough bytes a run of this model needs: weights (with B, gradients, optimiser state,
    probe and snapshot copies) plus the activity of a minibatch (and of an evaluation batch)."""
    weights, units = _layers(config, input_shape, n_outputs)
    t = config.train
    optimiser = 2 if t.optimizer == "adam" else int(t.momentum > 0)
    copies = WEIGHT_COPIES + (config.rule.name != "bp") + optimiser
    batch = max(t.batch_size, 1000)  # evaluation runs in batches of 1000
    return 4 * (weights * copies + batch * units * ACTIVATION_COPIES)


def _what_to_lower(config: Config) -> str:
    m = config.model
    if m.kind == "convnet":
        return f"lower model.channels (now {m.channels}) or train.batch_size"
    if m.kind == "autoencoder":
        return f"lower model.width (now {m.width}) or model.code_size (now {m.code_size})"
    if m.kind == "rnn":
        return f"lower model.width (now {m.width}) or train.batch_size"
    return f"lower model.width (now {m.width}) or model.depth (now {m.depth})"


def check_fits(config: Config, input_shape: tuple[int, ...], n_outputs: int) -> None:
    """ConfigError when the model cannot fit in the memory of its device, before allocating."""
    problem = too_large(estimate_bytes(config, input_shape, n_outputs), config.train.device)
    if problem:
        raise ConfigError(f"the {config.model.kind} model {problem}; {_what_to_lower(config)}")


def build(
    config: Config, input_shape: tuple[int, ...], n_outputs: int, generator: torch.Generator
) -> Network:
    """The network named by ``config.model.kind`` for inputs of ``input_shape`` (one sample).

    Shapes and memory are checked first: a model that cannot work or fit is refused with a
    ConfigError before any of it is allocated.
    """
    m = config.model
    if n_outputs < 1 and m.kind != "autoencoder":
        raise ConfigError(
            f"the data has no classes to predict (n_outputs={n_outputs}); choose labelled "
            "data or set model.kind=autoencoder"
        )
    check_fits(config, input_shape, n_outputs)
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
    raise ConfigError(
        f"unknown model kind {m.kind!r}; set model.kind to mlp, convnet, rnn or autoencoder"
    )
