"""Weight mirror (Akrout et al. 2019): B learns W from the layer's own response to noise.

After each step every layer is driven with white noise ξ (``rule.mirror_samples`` samples,
unit variance) at its input; its output is y = W ξ, and B moves by
η·(mean of y ξᵀ − B), η = ``rule.mirror_lr``. The mean of y ξᵀ is W, so B converges to W
(the decay, equal to η, sets the scale), within a noise that more samples or a smaller η
lower. A convolution is mirrored on single patches (its weight seen as out × in·kh·kw). B
starts as FA's random B.

``rule.mirror_every`` = k > 1 mirrors after every k-th step only (steps k, 2k, ...), for a
k-th of the mirror's cost; each layer then counts its steps in a buffer that checkpoints hold,
so a resumed run mirrors after the same steps. At the same η, B then follows W k times more
slowly; k·η keeps its pace and gives the noise of mirror_samples / k samples
(``benchmarks/mirror_table.py`` measures both). k = 1, Akrout et al.'s schedule, keeps no
counter: its stores are those of the rule before the option.
"""

from __future__ import annotations

import torch
from torch import nn

from ..feedback import feedback_layers
from .fa import FeedbackAlignment

#: each layer's count of optimiser steps (a one-element int64 buffer), where k > 1
COUNTER = "mirror_steps"


class WeightMirror(FeedbackAlignment):
    name = "wm"

    def __init__(self, config, seed: int):
        super().__init__(config, seed)
        self.noise = torch.Generator().manual_seed(seed + 3)

    def attach(
        self, model: nn.Module, generator: torch.Generator, input_shape: tuple[int, ...]
    ) -> None:
        super().attach(model, generator, input_shape)
        if self.config.mirror_every > 1:
            for layer in feedback_layers(model).values():
                layer.register_buffer(COUNTER, torch.zeros(1, dtype=torch.int64))

    @torch.no_grad()
    def after_step(self, layers, optimizer) -> None:
        n, lr, every = self.config.mirror_samples, self.config.mirror_lr, self.config.mirror_every
        if every > 1:
            counts = [getattr(layer, COUNTER) for layer in layers.values()]
            for count in counts:
                count += 1
            if counts and int(counts[0]) % every:  # the layers count alike: one read a step
                return
        for layer in layers.values():
            w = layer.weight.reshape(layer.weight.shape[0], -1)
            xi = torch.randn((n, w.shape[1]), generator=self.noise, dtype=w.dtype)
            xi = xi.to(w.device)
            # W ξᵀ rather than ξ Wᵀ: the product streams W's rows once (a third faster on
            # a 512 × 3072 layer at 32 samples) and gives yᵀ, the factor B's update takes
            y_t = torch.mm(w, xi.T)
            b = layer.feedback.view(w.shape)
            b.addmm_(y_t, xi, beta=1.0 - lr, alpha=lr / n)  # one pass over B

    def generators(self) -> dict[str, torch.Generator]:
        return {"noise": self.noise}
