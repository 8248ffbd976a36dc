"""What every dynalign model provides to the trainer, beyond ``forward``.

A model turns a batch into outputs (``forward``), outputs into named loss terms
(``loss_terms``: the key ``"loss"`` is what is differentiated, any other key is recorded per
step as well), and outputs into counts of correct predictions (``correct``). Probes find the
model's feedback layers by module path, so models name their submodules after what they are.

A model kind (one line in ``dynalign.registry.MODELS``) also says which keys of the config's
``[model]`` section it reads (``reads``: any other key set away from its default is refused by
``config.check_consistency``), builds itself from that section (``from_config``), and sizes
itself for the memory check before anything is allocated (``size``, ``what_to_lower``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import ACTIVATIONS

if TYPE_CHECKING:
    from ..config import ModelConfig


class Network(nn.Module):
    """Base class: classification by cross-entropy over the last dimension."""

    #: extra loss terms this model reports besides "loss" (recorded per step)
    loss_term_names: tuple[str, ...] = ()
    #: the keys of the config's [model] section this kind reads, besides ``kind``
    reads: tuple[str, ...] = ()
    #: the values of model.activation this kind supports (where it reads model.activation)
    activations: tuple[str, ...] = ACTIVATIONS.names()
    #: False for a model that learns without labels (the data may have no classes)
    needs_labels: bool = True

    @classmethod
    def from_config(
        cls,
        model_config: ModelConfig,
        input_shape: tuple[int, ...],
        n_outputs: int,
        generator: torch.Generator | None = None,
    ) -> Network:
        """The model for samples of ``input_shape`` and ``n_outputs`` classes (or symbols),
        built from the ``reads`` keys of ``model_config``."""
        raise NotImplementedError(f"{cls.__name__} does not build from a config")

    @classmethod
    def size(
        cls, model_config: ModelConfig, input_shape: tuple[int, ...], n_outputs: int
    ) -> tuple[int, int]:
        """(weights, units per sample) of the model ``model_config`` asks for: what its memory
        scales with. Raises ConfigError for a shape the model cannot take."""
        raise NotImplementedError(f"{cls.__name__} does not estimate its size")

    @classmethod
    def what_to_lower(cls, model_config: ModelConfig) -> str:
        """The hint of a too-large model's error: which keys make it smaller."""
        return "lower train.batch_size"

    def loss_terms(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
        return {"loss": F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))}

    def correct(self, out: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """(number correct, number scored); (0, 0) where accuracy has no meaning."""
        count, scored = self.correct_count(out, y)
        return int(count), scored

    def correct_count(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``correct`` with the count left on the device (a 0-d tensor): a training step
        brings it to the host together with the loss, in one transfer. (An argmax has no
        gradient: no ``no_grad`` needed, whose decorator cost a step some 10 µs.)"""
        return (out.argmax(-1) == y).sum(), y.numel()
