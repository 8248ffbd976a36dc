"""Kolen-Pollack (as in Akrout et al. 2019): B receives the same update as W, and both decay with
the same weight decay, so their difference shrinks and B converges to W.

B is trained as W is, by the same optimiser step on the same gradient G, with its own weight
decay: SGD's ΔB = -lr·v_B, v_B ← m·v_B + G + weight_decay·B. Only the difference D = B - W
matters, since the G terms cancel: v_D ← m·v_D + weight_decay·D, D ← D - lr·v_D, then B = W + D.
That recursion has the same two scalar coefficients for every weight, so from v_D = 0 it keeps D
= α·D₀ and v_D = β·D₀: the rule keeps D₀ (B - W at the start) and the two numbers (α, β) in
float64 buffers that checkpoints hold, and a step writes B = W + α·D₀ (in the optimiser's pass
over W where it can: ``dynalign.renewal``). Without momentum α shrinks by (1 - lr·weight_decay)
a step; with momentum m about 1/(1 - m) times faster, as W's own decay does. Under Adam, whose
per-weight scaling does not let the gradient terms cancel, α shrinks by (1 - lr·weight_decay) a
step. A sign constraint clips W, not B.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..feedback import FeedbackLayer, feedback_layers
from ..renewal import Renewal, renew
from .base import param_group
from .fa import FeedbackAlignment


class KolenPollack(FeedbackAlignment):
    name = "kp"

    @classmethod
    def check(cls, config: Config) -> str | None:
        if config.train.weight_decay <= 0:
            return (
                "rule.name=kp needs train.weight_decay > 0: without decay B - W never shrinks "
                "and B does not converge to W; set e.g. train.weight_decay=0.001"
            )
        return None

    def attach(
        self, model: nn.Module, generator: torch.Generator, input_shape: tuple[int, ...]
    ) -> None:
        super().attach(model, generator, input_shape)  # B starts as FA's random B
        for layer in feedback_layers(model).values():
            layer.register_buffer("feedback_offset_start", layer.feedback - layer.weight.detach())
            scale = torch.tensor([1.0, 0.0], dtype=torch.float64)  # α, β: float64 at any W dtype
            layer.register_buffer("feedback_offset_scale", scale)

    def refresh(self, layers: dict[str, FeedbackLayer]) -> None:
        renew(self._renewals(layers), (layer.weight for layer in layers.values()))

    def renewals(self, layers, optimizer) -> list[Renewal]:
        """B = W + α·D₀ with α advanced by this step's decay."""
        for layer in layers.values():
            group = param_group(optimizer, layer.weight)
            lr, decay = group["lr"], group.get("weight_decay", 0.0)
            momentum = group.get("momentum", 0.0)  # SGD's; Adam has betas instead
            alpha, beta = layer.feedback_offset_scale.tolist()
            if momentum:
                beta = momentum * beta + decay * alpha
                alpha = alpha - lr * beta
            else:
                alpha = alpha * (1.0 - lr * decay)
            layer.feedback_offset_scale.copy_(torch.tensor([alpha, beta], dtype=torch.float64))
        return self._renewals(layers)

    def _renewals(self, layers: dict[str, FeedbackLayer]) -> list[Renewal]:
        """B = W + α·D₀ at the α the rule holds now."""
        return [
            Renewal(
                layer.feedback_buffer(),
                offset=layer.feedback_offset_start,
                alpha=float(layer.feedback_offset_scale[0]),
            )
            for layer in layers.values()
        ]


def offset(layer: FeedbackLayer) -> torch.Tensor:
    """D = B - W as the rule holds it, α·D₀."""
    return layer.feedback_offset_start * float(layer.feedback_offset_scale[0])
