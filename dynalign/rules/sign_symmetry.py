"""Sign-concordant feedback (Liao, Leibo & Poggio 2016): B shares W's signs, not its sizes.

Three variants, as biotorch defines them: ``usf`` B = sign(W) times one scale per layer;
``brsf`` B = |M| sign(W) with M redrawn every step; ``frsf`` the same with M fixed. W changes
every step, so B is renewed after every step (and whenever W changes otherwise). The scale is
the standard deviation of W's init distribution (times ``rule.scale``), and M is drawn from
that distribution, so B starts as large as FA's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..feedback import FeedbackLayer, feedback_layers
from ..renewal import Renewal
from .base import Rule, random_like


class UniformSignFeedback(Rule):
    name = "usf"

    def attach(
        self, model: nn.Module, generator: torch.Generator, input_shape: tuple[int, ...]
    ) -> None:
        layers = feedback_layers(model)
        for layer in layers.values():
            layer.feedback = torch.empty_like(layer.weight.detach())
            self._fix(layer, generator)
        self.refresh(layers)

    def _fix(self, layer: FeedbackLayer, generator: torch.Generator) -> None:
        """Draw what stays fixed for the whole run (frsf's M)."""

    def _magnitude(self, layer: FeedbackLayer) -> torch.Tensor | float:
        """|B| for the next B: one number per layer here, random in the variants below."""
        return layer.init_bound() * self.config.scale / 3**0.5

    def refresh(self, layers: dict[str, FeedbackLayer]) -> None:
        self.after_step(layers, None)  # the renewals, from W as it is now

    def renewals(self, layers, optimizer) -> list[Renewal] | None:
        """The same magnitudes every step (one number, or frsf's fixed M), so B changes only
        where W changes sides (``Renewal.unchanged``); B was written from them at ``attach``."""
        return [
            Renewal(layer.feedback_buffer(), self._magnitude(layer), unchanged=True)
            for layer in layers.values()
        ]


class FixedRandomSignFeedback(UniformSignFeedback):
    """M drawn once, from the init generator (a buffer, so checkpoints keep it)."""

    name = "frsf"

    def _fix(self, layer: FeedbackLayer, generator: torch.Generator) -> None:
        w = layer.weight
        bound = layer.init_bound() * self.config.scale
        m = random_like(w.shape, bound, self.config.distribution, generator).abs()
        layer.register_buffer("feedback_magnitude", m.to(dtype=w.dtype, device=w.device))

    def _magnitude(self, layer: FeedbackLayer) -> torch.Tensor:
        return layer.feedback_magnitude


class BatchRandomSignFeedback(UniformSignFeedback):
    """M redrawn for every step, from the rule's own generator.

    Uniform |M| (the default) is a counter-based hash fused with the sign
    (``dynalign.sign_concordant``): two keys per layer and step come from the generator, and
    the two million numbers of a 3×512 net take under 1 ms instead of the 7-8 ms of torch's
    serial CPU generator. Normal |M| is drawn by torch, half-normal as |N|·σ, straight into B.
    """

    name = "brsf"

    def __init__(self, config, seed: int):
        super().__init__(config, seed)
        self.draws = torch.Generator().manual_seed(seed + 3)

    def renewals(self, layers, optimizer) -> list[Renewal] | None:
        """Uniform |M|: two fresh keys per layer (in layer order); normal: None (torch draws
        |M| in ``after_step``)."""
        if self.config.distribution != "uniform":
            return None
        return [
            Renewal(
                layer.feedback_buffer(),
                layer.init_bound() * self.config.scale,
                tuple(torch.randint(0, 1 << 32, (2,), generator=self.draws).tolist()),
            )
            for layer in layers.values()
        ]

    @torch.no_grad()
    def after_step(self, layers, optimizer) -> None:
        if self.config.distribution == "uniform":
            super().after_step(layers, optimizer)  # the renewals
            return
        for layer in layers.values():
            b, w = layer.feedback, layer.weight.detach()
            bound = layer.init_bound() * self.config.scale
            drawn = b if b.device.type == "cpu" else torch.empty(b.shape, dtype=b.dtype)
            drawn.normal_(0.0, bound / 3**0.5, generator=self.draws).abs_()
            if drawn is not b:
                b.copy_(drawn)
            b.mul_(torch.sign(w))

    def generators(self) -> dict[str, torch.Generator]:
        return {"draws": self.draws}
