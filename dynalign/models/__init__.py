"""Model zoo: ``build(config, dataset)`` makes the network a run trains.

Each kind is one file here and one line in ``dynalign.registry.MODELS``; its class (a
:class:`Network`) declares the ``[model]`` keys it reads and builds and sizes itself from them,
so nothing below depends on which kind it is. Only the kind a run asks for is imported.
"""

from __future__ import annotations

import torch

from ..config import Config, ConfigError
from ..memory import too_large
from ..registry import MODELS
from .base import Network
from .mlp import MLP

__all__ = ["Network", "MLP", "build", "check_fits", "estimate_bytes", "model_class"]

#: float32 copies of the weights a run holds: W, its gradient, the true gradient of a probe
#: step, W before the step, a host snapshot; FA adds B, the optimiser its state
WEIGHT_COPIES = 5
#: float32 copies of each unit's activity per sample: output, captured output, two error signals
ACTIVATION_COPIES = 4


def model_class(kind: str) -> type[Network]:
    """The Network subclass registered as ``model.kind=kind`` (imported now)."""
    if kind not in MODELS:
        raise ConfigError(
            f"unknown model kind {kind!r}; set model.kind to one of {', '.join(MODELS.names())}"
        )
    return MODELS.load(kind)


def estimate_bytes(config: Config, input_shape: tuple[int, ...], n_outputs: int) -> int:
    """Rough bytes a run of this model needs: weights (with B, gradients, optimiser state,
    probe and snapshot copies) plus the activity of a minibatch (and of an evaluation batch)."""
    model = model_class(config.model.kind)
    weights, units = model.size(config.model, input_shape, n_outputs)
    t = config.train
    optimiser = 2 if t.optimizer == "adam" else int(t.momentum > 0)
    copies = WEIGHT_COPIES + (config.rule.name != "bp") + optimiser
    batch = max(t.batch_size, 1000)  # evaluation runs in batches of 1000
    return 4 * (weights * copies + batch * units * ACTIVATION_COPIES)


def check_fits(config: Config, input_shape: tuple[int, ...], n_outputs: int) -> None:
    """ConfigError when the model cannot fit in the memory of its device, before allocating."""
    problem = too_large(estimate_bytes(config, input_shape, n_outputs), config.train.device)
    if problem:
        hint = model_class(config.model.kind).what_to_lower(config.model)
        raise ConfigError(f"the {config.model.kind} model {problem}; {hint}")


def build(
    config: Config, input_shape: tuple[int, ...], n_outputs: int, generator: torch.Generator
) -> Network:
    """The network named by ``config.model.kind`` for inputs of ``input_shape`` (one sample).

    Shapes and memory are checked first: a model that cannot work or fit is refused with a
    ConfigError before any of it is allocated.
    """
    model = model_class(config.model.kind)
    if n_outputs < 1 and model.needs_labels:
        unlabelled = [k for k in MODELS.names() if not model_class(k).needs_labels]
        raise ConfigError(
            f"the data has no classes to predict (n_outputs={n_outputs}); choose labelled "
            f"data or set model.kind={' or '.join(unlabelled)}"
        )
    check_fits(config, input_shape, n_outputs)
    return model.from_config(config.model, input_shape, n_outputs, generator)
