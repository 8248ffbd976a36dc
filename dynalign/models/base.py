"""What every dynalign model provides to the trainer, beyond ``forward``.

A model turns a batch into outputs (``forward``), outputs into named loss terms
(``loss_terms``: the key ``"loss"`` is what is differentiated, any other key is recorded per
step as well), and outputs into counts of correct predictions (``correct``). Probes find the
model's feedback layers by module path, so models name their submodules after what they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Network(nn.Module):
    """Base class: classification by cross-entropy over the last dimension."""

    #: extra loss terms this model reports besides "loss" (recorded per step)
    loss_term_names: tuple[str, ...] = ()

    def loss_terms(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
        return {"loss": F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))}

    @torch.no_grad()
    def correct(self, out: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """(number correct, number scored); (0, 0) where accuracy has no meaning."""
        pred = out.argmax(-1)
        return int((pred == y).sum()), y.numel()
