"""Sparse autoencoder: two sigmoid hidden layers, reconstruction loss plus a KL sparsity penalty.

The classic objective (Ng's sparse-autoencoder notes): half the batch-mean summed squared error,
plus ``beta`` times, for every hidden unit, KL(rho || rho_hat) between the target mean activation
rho and the unit's mean activation over the batch. The penalty covers both hidden layers. The
output is a sigmoid, so inputs must lie in [0, 1] (``data.scaling=unit``).

The study found that under FA the loss falls while reconstructions do not improve; recording the
two terms separately (``loss_term_names``) is what lets the analyses show that.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import TYPE_CHECKING

import torch

from ..config import ConfigError
from ..feedback import Linear
from .base import Network

if TYPE_CHECKING:
    from ..config import ModelConfig

#: rho_hat is clamped into (EPS, 1 - EPS) so that saturated units give a finite penalty
EPS = 1e-6


def kl_sparsity(rho: float, activations: torch.Tensor) -> torch.Tensor:
    """Sum over units of KL(rho || rho_hat_j), rho_hat_j the batch mean of unit j."""
    rho_hat = activations.mean(0).clamp(EPS, 1 - EPS)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


class SparseAutoencoder(Network):
    """fc1 (n_inputs -> width) -> fc2 (width -> code_size) -> fc3 (code_size -> n_inputs)."""

    loss_term_names = ("recon_loss", "sparsity_loss")
    #: no activation, batch norm or depth: the layers and their sigmoids are fixed
    reads = ("width", "code_size", "sparsity_target", "sparsity_weight")
    needs_labels = False

    def __init__(
        self,
        n_inputs: int,
        width: int,
        code_size: int,
        sparsity_target: float,
        sparsity_weight: float,
    ):
        super().__init__()
        for name, size in (("n_inputs", n_inputs), ("width", width), ("code_size", code_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ConfigError(
                    f"SparseAutoencoder {name} must be a positive int, got {size!r}; set "
                    "model.width and model.code_size to 1 or more"
                )
        if not 0.0 < sparsity_target < 1.0:
            raise ConfigError(
                f"sparsity_target={sparsity_target!r} must lie strictly between 0 and 1; set "
                "model.sparsity_target to e.g. 0.05"
            )
        if sparsity_weight < 0:
            raise ConfigError(
                f"sparsity_weight={sparsity_weight!r} must not be negative; set "
                "model.sparsity_weight to 0 to turn it off"
            )
        self.n_inputs = n_inputs
        self.sparsity_target = float(sparsity_target)
        self.sparsity_weight = float(sparsity_weight)
        self.fc1 = Linear(n_inputs, width)
        self.fc2 = Linear(width, code_size)
        self.fc3 = Linear(code_size, n_inputs)
        #: hidden activations (fc1, fc2 layers) of the last ``forward``, for the sparsity term
        self.hidden: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_config(
        cls,
        model_config: ModelConfig,
        input_shape: tuple[int, ...],
        n_outputs: int,
        generator: torch.Generator | None = None,
    ) -> SparseAutoencoder:
        """n_outputs is ignored: the output is the input's reconstruction."""
        m = model_config
        return cls(
            math.prod(input_shape), m.width, m.code_size, m.sparsity_target, m.sparsity_weight
        )

    @classmethod
    def size(
        cls, model_config: ModelConfig, input_shape: tuple[int, ...], n_outputs: int
    ) -> tuple[int, int]:
        n_in = math.prod(input_shape)
        sizes = [n_in, model_config.width, model_config.code_size, n_in]
        weights = sum((a + 1) * b for a, b in pairwise(sizes))
        return weights, sum(sizes)

    @classmethod
    def what_to_lower(cls, model_config: ModelConfig) -> str:
        m = model_config
        return f"lower model.width (now {m.width}) or model.code_size (now {m.code_size})"

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x[0].numel() != self.n_inputs:
            raise ValueError(
                f"SparseAutoencoder expects {self.n_inputs} inputs per sample but got a batch of "
                f"shape {tuple(x.shape)}; build it with n_inputs equal to one sample's size"
            )
        return x.reshape(x.shape[0], self.n_inputs)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h1 = torch.sigmoid(self.fc1(self._flatten(x)))
        h2 = torch.sigmoid(self.fc2(h1))
        return torch.sigmoid(self.fc3(h2)), h1, h2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction (N, n_inputs); the hidden activations are kept for ``loss_terms``."""
        out, h1, h2 = self._run(x)
        self.hidden = (h1, h2)
        return out

    def loss_terms(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
        """``loss = recon_loss + sparsity_loss`` for ``out``, the output of the last forward."""
        if self.hidden is None or self.hidden[0].shape[0] != out.shape[0]:
            raise ValueError(
                "SparseAutoencoder.loss_terms needs the output of the latest forward call; "
                "call model(x) and pass its result"
            )
        target = self._flatten(x)
        recon = 0.5 * (out - target).pow(2).sum(1).mean()
        kl = sum(kl_sparsity(self.sparsity_target, h) for h in self.hidden)
        sparsity = self.sparsity_weight * kl
        return {"loss": recon + sparsity, "recon_loss": recon, "sparsity_loss": sparsity}

    def correct_count(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """An autoencoder has no accuracy: nothing is scored."""
        return out.new_zeros(()), 0

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction shaped like ``x``; leaves the kept hidden activations alone."""
        return self._run(x)[0].reshape(x.shape)
