"""Mixed-ReLU: a rectifier whose units are excitatory or inhibitory, fixed at init.

The study's new activation: unit i draws a sign s_i once (+1 with the excitatory fraction) and
outputs ``max(z, 0)`` if excitatory, ``min(z, 0)`` if inhibitory, i.e. ``s * relu(s * z)``. Each
unit's output then has a fixed sign, as a neuron's effect on its targets has under Dale's law,
without constraining the weights themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ConfigError


class MixedReLU(nn.Module):
    """``s * relu(s * z)`` with one fixed sign per unit along dim 1 (per channel for conv)."""

    #: built per layer as ``MixedReLU(units, excitatory_fraction, generator)`` by
    #: ``models.mlp.make_activation`` (activations without per-unit state take no arguments)
    per_unit = True
    sign: torch.Tensor

    def __init__(
        self,
        num_units: int,
        excitatory_fraction: float = 0.5,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units <= 0:
            raise ConfigError(
                f"MixedReLU needs a positive int number of units, got {num_units!r}; set "
                "model.width to 1 or more"
            )
        if not 0.0 <= excitatory_fraction <= 1.0:
            raise ConfigError(
                f"MixedReLU excitatory_fraction={excitatory_fraction!r} must lie between 0 and 1;"
                " set model.excitatory_fraction to e.g. 0.5"
            )
        self.num_units = num_units
        self.excitatory_fraction = excitatory_fraction
        device = generator.device if generator is not None else None
        uniform = torch.rand(num_units, generator=generator, device=device, dtype=torch.float64)
        sign = (uniform < excitatory_fraction).to(torch.get_default_dtype()) * 2 - 1
        self.register_buffer("sign", sign.cpu())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() < 2 or z.shape[1] != self.num_units:
            raise ValueError(
                f"MixedReLU has {self.num_units} units along dim 1 but got an input of shape "
                f"{tuple(z.shape)}; pass (N, {self.num_units}, ...)"
            )
        sign = self.sign.to(z.dtype).reshape(1, -1, *([1] * (z.dim() - 2)))
        return sign * torch.relu(sign * z)

    def extra_repr(self) -> str:
        n_exc = int((self.sign > 0).sum())
        return f"{self.num_units}, excitatory={n_exc}"
