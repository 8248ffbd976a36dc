"""Dale's law: forward weights whose signs are fixed for the whole run.

Each weight of every feedback layer gets a sign at construction (±1): per synapse, or per
presynaptic neuron, so that all outgoing synapses of one neuron are excitatory or all are
inhibitory. In PyTorch's ``(out, in, ...)`` weight layout a presynaptic neuron's outgoing
synapses form a *column* (dim 1; for a conv weight, one input channel).

An optimiser step that would carry a weight across zero is not undone but clipped: the weight
is set to exactly 0, and it may grow again on its own side later. ``project()`` does this after
every step and counts those attempted flips, the quantity whose rise precedes unlearning.
Biases are not constrained, and neither are feedback tensors B.

With more excitatory than inhibitory weights of the same size, every unit's input from
non-negative (ReLU) activity has a positive mean that grows layer by layer: activations and
the first losses explode. ``balance=True`` scales inhibitory magnitudes by ``f / (1 - f)``
(f the excitatory fraction), so that each unit's expected input is zero, and then rescales the
layer so that its Frobenius norm is the one it was initialised with.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ConfigError, ConstraintConfig
from .feedback import FeedbackLayer, feedback_layers

LEVELS = ("synapse", "neuron")


class SignConstraintError(ConfigError):
    """A sign constraint that cannot be built; the message says how to fix it."""


def draw_signs(
    shape: torch.Size | tuple[int, ...],
    excitatory_fraction: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """A float64 tensor of ±1, each entry +1 independently with ``excitatory_fraction``."""
    device = generator.device if generator is not None else None
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return torch.where(uniform < excitatory_fraction, 1.0, -1.0).to(torch.float64)


def balanced_magnitudes(
    magnitude: torch.Tensor, sign: torch.Tensor, excitatory_fraction: float
) -> torch.Tensor:
    """Inhibitory magnitudes scaled by ``f / (1 - f)``, then all by one factor keeping the norm.

    With a fraction f of excitatory weights this makes a unit's expected input from
    non-negative activity zero, while the layer's overall size stays that of its init.
    """
    ratio = excitatory_fraction / (1.0 - excitatory_fraction)
    scaled = torch.where(sign < 0, magnitude * ratio, magnitude)
    norm = torch.linalg.vector_norm(scaled)
    if norm == 0:
        return scaled
    return scaled * (torch.linalg.vector_norm(magnitude) / norm)


def _layer_signs(
    weight: torch.Tensor, level: str, excitatory_fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """Signs shaped like ``weight``: one per entry, or one per input unit shared by its column."""
    if level == "synapse":
        signs = draw_signs(weight.shape, excitatory_fraction, generator)
    else:
        per_input = draw_signs((weight.shape[1],), excitatory_fraction, generator)
        column = per_input.reshape(1, -1, *([1] * (weight.dim() - 2)))
        signs = column.expand(weight.shape)
    return signs.to(dtype=weight.dtype, device=weight.device).contiguous()


class SignConstraint:
    """Fixed signs for the weights of ``layers`` and the projection that keeps them.

    Build it after the model is on its device and in its dtype: the signs are made there.
    """

    def __init__(
        self,
        layers: dict[str, FeedbackLayer],
        level: str,
        excitatory_fraction: float,
        generator: torch.Generator,
        balance: bool = False,
    ):
        if level not in LEVELS:
            raise SignConstraintError(
                f"sign constraint level {level!r} is unknown; set constraint.sign to none or "
                f"one of {', '.join(LEVELS)}"
            )
        if not 0.0 <= excitatory_fraction <= 1.0:
            raise SignConstraintError(
                f"excitatory_fraction={excitatory_fraction!r} must lie between 0 and 1; set "
                "constraint.excitatory_fraction to e.g. 0.8"
            )
        if balance and not 0.0 < excitatory_fraction < 1.0:
            raise SignConstraintError(
                "balance needs both excitatory and inhibitory weights, but excitatory_fraction="
                f"{excitatory_fraction!r}; choose a fraction strictly between 0 and 1, or "
                "balance=false"
            )
        if not layers:
            raise SignConstraintError(
                "a sign constraint needs at least one feedback layer; build the model from "
                "dynalign.feedback layers or set constraint.sign=none"
            )
        for name, layer in layers.items():
            if level == "neuron" and layer.weight.dim() < 2:
                raise SignConstraintError(
                    f"layer {name!r} has a {layer.weight.dim()}-D weight; neuron-level signs "
                    "need an (out, in, ...) weight, use level 'synapse'"
                )
        self.level = level
        self.excitatory_fraction = excitatory_fraction
        self.balance = balance
        self.layers = dict(layers)
        self.signs: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                sign = _layer_signs(layer.weight, level, excitatory_fraction, generator)
                self.signs[name] = sign
                magnitude = layer.weight.abs()
                if balance:
                    magnitude = balanced_magnitudes(magnitude, sign, excitatory_fraction)
                layer.weight.copy_(magnitude * sign)

    def _sign_like(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The layer's signs on the weight's current device and dtype (the model may have moved)."""
        sign = self.signs[name]
        if sign.device != weight.device or sign.dtype != weight.dtype:
            sign = self.signs[name] = sign.to(device=weight.device, dtype=weight.dtype)
        return sign

    def project(self) -> dict[str, torch.Tensor]:
        """Zero every weight on the wrong side of zero; per layer, how many there were.

        The counts are 0-d int64 tensors on the weights' device, so the hot path never waits
        for the device; call ``.item()`` (or :func:`counts_to_ints`) only when recording.
        """
        attempted: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                weight = layer.weight
                wrong = (weight * self._sign_like(name, weight)) < 0
                attempted[name] = wrong.sum()
                weight.masked_fill_(wrong, 0.0)
        return attempted

    def __repr__(self) -> str:
        return (
            f"SignConstraint(level={self.level!r}, excitatory_fraction="
            f"{self.excitatory_fraction}, balance={self.balance}, layers={list(self.layers)})"
        )


def counts_to_ints(counts: dict[str, torch.Tensor]) -> dict[str, int]:
    """``project()``'s tensor counts as Python ints (one host sync per call)."""
    if not counts:
        return {}
    values = torch.stack(list(counts.values())).tolist()
    return dict(zip(counts, values, strict=True))


def make_constraint(
    cfg: ConstraintConfig, model: nn.Module, generator: torch.Generator
) -> SignConstraint | None:
    """The constraint ``cfg.sign`` asks for on every feedback layer of ``model``; None for none."""
    if cfg.sign == "none":
        return None
    return SignConstraint(
        feedback_layers(model), cfg.sign, cfg.excitatory_fraction, generator, cfg.balance
    )
