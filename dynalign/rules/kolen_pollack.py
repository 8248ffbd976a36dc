"""Kolen-Pollack (as in Akrout et al. 2019): B receives the same update as W, and both decay
with the same weight decay, so their difference shrinks and B converges to W.

B is trained as W is, by the same optimiser step on the same gradient G, with its own weight
decay: SGD's ΔB = -lr·v_B, v_B ← m·v_B + G + weight_decay·B. Only the difference D = B - W
has to be kept (with its momentum v_D = v_B - v_W, buffers that checkpoints hold), since the
G terms cancel: v_D ← m·v_D + weight_decay·D, D ← D - lr·v_D, then B = W + D. Without
momentum D shrinks by (1 - lr·weight_decay) a step; with momentum m about 1/(1 - m) times
faster, as W's own decay does. Under Adam, whose per-weight scaling does not let the gradient
terms cancel, D decays by (1 - lr·weight_decay) a step. A sign constraint clips W, not B.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..feedback import FeedbackLayer, feedback_layers
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
            offset = layer.feedback - layer.weight.detach()
            layer.register_buffer("feedback_offset", offset)
            layer.register_buffer("feedback_offset_momentum", torch.zeros_like(offset))

    @torch.no_grad()
    def refresh(self, layers: dict[str, FeedbackLayer]) -> None:
        for layer in layers.values():
            torch.add(layer.weight, layer.feedback_offset, out=layer.feedback)

    @torch.no_grad()
    def after_step(self, layers, optimizer) -> None:
        for layer in layers.values():
            group = param_group(optimizer, layer.weight)
            lr, decay = group["lr"], group.get("weight_decay", 0.0)
            momentum = group.get("momentum", 0.0)  # SGD's; Adam has betas instead
            tensors = (
                layer.feedback_offset,
                layer.feedback_offset_momentum,
                layer.weight.detach(),
                layer.feedback,
            )
            if all(t.device.type == "cpu" and t.is_contiguous() for t in tensors):
                arrays = [t.reshape(-1).numpy() for t in tensors]
                _compiled_step()(*arrays, lr, decay, momentum)
                continue
            offset, velocity, weight, feedback = tensors
            if momentum:
                velocity.mul_(momentum).add_(offset, alpha=decay)
                offset.sub_(velocity, alpha=lr)
            else:
                offset.mul_(1.0 - lr * decay)
            torch.add(weight, offset, out=feedback)


def _step(offset, velocity, weight, feedback, lr, decay, momentum) -> None:
    """One pass over D, its momentum, W and B (the tensor expressions take four)."""
    for i in range(offset.size):
        d = offset[i]
        if momentum != 0.0:
            v = momentum * velocity[i] + decay * d
            velocity[i] = v
            d = d - lr * v
        else:
            d = d * (1.0 - lr * decay)
        offset[i] = d
        feedback[i] = weight[i] + d


_STEP = None


def _compiled_step():
    """``_step`` compiled (once per process, cached on disk); numba is imported on first use."""
    global _STEP
    if _STEP is None:
        import numba

        _STEP = numba.njit(cache=True, nogil=True)(_step)
    return _STEP
