"""Batch normalisation variants compared by the study (finding 3).

Every variant normalises per feature of an (N, C) input and per channel of an (N, C, ...) input,
keeps running statistics (starting at mean 0, variance 1) and uses them in evaluation mode.
They differ only in what they normalise with during training:

- ``standard``: the batch's own mean and biased variance, then a learnable scale γ (``weight``)
  and shift β (``bias``);
- ``noaffine``: the same without γ and β;
- ``running_prev``: the running statistics of *previous* batches only, as constants; the
  current batch updates them afterwards;
- ``running_incl``: the running statistics after the current batch has been folded in, so the
  gradient flows through the current batch's share ``m * batch statistic``.

Running estimates follow torch's convention, ``new = (1 - m) * old + m * batch``, with the
*unbiased* batch variance (N / (N - 1) times the biased one, N the values per channel), as
``torch.nn.BatchNorm`` does; only ``standard`` and ``noaffine`` normalise with the biased
variance itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, _suggest
from .registry import BATCH_NORMS

#: the variants that build a module (every name of ``registry.BATCH_NORMS`` but "none")
BATCH_NORM_KINDS = tuple(name for name, entry in BATCH_NORMS.entries.items() if entry.target)


class _RunningNorm(nn.Module):
    """Shared parts: running-statistic buffers, input checks, evaluation with running stats."""

    def __init__(self, num_features: int, momentum: float, eps: float):
        super().__init__()
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"batch norm over {self.num_features} features expects input of shape "
                f"(N, {self.num_features}) or (N, {self.num_features}, H, W), got {tuple(x.shape)}"
            )
        if self.training and x.numel() // x.shape[1] < 2:
            raise ValueError(
                f"batch norm needs more than one value per feature in training, got input of "
                f"shape {tuple(x.shape)}; use a batch size of 2 or more"
            )

    def _normalise_with_running(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, training=False, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}"


class BatchNorm(_RunningNorm):
    """Normalise with the batch's own statistics (``affine``: then scale by γ, shift by β)."""

    #: the arguments of each ``model.batch_norm`` name registered to this class
    variants = {"standard": {"affine": True}, "noaffine": {"affine": False}}

    def __init__(
        self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True
    ):
        super().__init__(num_features, momentum, eps)
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, affine={self.affine}"


class RunningStatsBatchNorm(_RunningNorm):
    """Normalise in training with running statistics, without γ or β.

    ``include_current=False``: the statistics of previous batches (constants), updated after.
    ``include_current=True``: updated first, so the current batch's share carries gradient.
    """

    #: the arguments of each ``model.batch_norm`` name registered to this class
    variants = {
        "running_prev": {"include_current": False},
        "running_incl": {"include_current": True},
    }

    def __init__(
        self,
        num_features: int,
        momentum: float = 0.1,
        eps: float = 1e-5,
        include_current: bool = False,
    ):
        super().__init__(num_features, momentum, eps)
        self.include_current = include_current

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if not self.training:
            return self._normalise_with_running(x)
        dims = [0, *range(2, x.dim())]
        batch_mean = x.mean(dims)
        batch_var = x.var(dims, correction=1)
        m = self.momentum
        old_mean, old_var = self.running_mean.detach(), self.running_var.detach()
        new_mean = (1 - m) * old_mean + m * batch_mean
        new_var = (1 - m) * old_var + m * batch_var
        if self.include_current:
            mean, var = new_mean, new_var
        else:
            mean, var = old_mean.clone(), old_var.clone()
        with torch.no_grad():
            self.running_mean.copy_(new_mean)
            self.running_var.copy_(new_var)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, include_current={self.include_current}"


def make_batch_norm(kind: str, num_features: int, momentum: float = 0.1) -> nn.Module:
    """One batch-norm module of the named variant (see the module docstring)."""
    if not 0 <= momentum <= 1:
        raise ConfigError(
            f"batch-norm momentum={momentum!r} must lie between 0 and 1; set "
            "model.bn_momentum to e.g. 0.1"
        )
    if kind not in BATCH_NORM_KINDS:
        raise ConfigError(
            f"unknown batch norm {kind!r}{_suggest(str(kind), list(BATCH_NORM_KINDS))}; set "
            f"model.batch_norm to none or one of {', '.join(BATCH_NORM_KINDS)}"
        )
    cls = BATCH_NORMS.load(kind)
    return cls(num_features, momentum, **cls.variants[kind])
