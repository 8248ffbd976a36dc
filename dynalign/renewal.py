"""B renewed from W element by element: how sign symmetry and Kolen-Pollack follow W.

These rules set every B from W after every optimiser step: B = m·sign(W) with m one number
(usf), a fixed tensor (frsf) or uniform numbers drawn afresh (brsf, hashed: see
``dynalign.sign_concordant``), or B = W + α·D₀ (Kolen-Pollack). Done after the step, that is
one more pass over W (read) and B (written): some 17 MB a step for a 3×512 net on 3072 inputs,
a tenth of the step's time on a CPU. A rule states each B as a ``Renewal`` instead; under SGD
on the CPU the optimiser's own pass writes B as it writes W (``dynalign.measured_step``), and
``apply`` writes it on its own elsewhere (another optimiser, a sign constraint, the first step,
another device). On the CPU both evaluate the same compiled expression, so B comes out
bitwise the same either way; torch's operations, with the same arithmetic, serve other devices
and layouts. Where no backward pass sends an error through B (a layer whose input needs no
gradient), an unprobed step leaves the renewal owed, and reading B writes it (``split_owed``,
``FeedbackLayer.defer_renewal``): the first layer's B is most of a net's, and only probes,
snapshots and checkpoints read it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .feedback import FeedbackLayer
from .sign_concordant import hashed_uniform, multiplier


@dataclass(frozen=True)
class Renewal:
    """B (``feedback``, written) as a function of W: W + alpha·offset when ``offset`` is given,
    else magnitude·sign(W) (0 where W is 0), the magnitude times a hashed uniform number per
    element when ``keys`` are given (two ints, taken mod 2³²)."""

    feedback: torch.Tensor
    magnitude: float | torch.Tensor = 1.0
    keys: tuple[int, int] | None = None
    offset: torch.Tensor | None = None
    alpha: float = 0.0
    #: the recipe B was last written with (a signed magnitude that does not change between
    #: steps, no keys): B then changes only where W changes sides of zero, and the update's pass
    #: writes only those elements (``apply`` still writes every one)
    unchanged: bool = False

    def __post_init__(self) -> None:
        if self.offset is not None and (
            self.keys is not None or isinstance(self.magnitude, torch.Tensor)
        ):
            raise ValueError("a renewal is W + alpha·offset or a signed magnitude, not both")
        if self.unchanged and (self.offset is not None or self.keys is not None):
            raise ValueError("only a signed magnitude without keys can be an unchanged recipe")

    def check(self, weight: torch.Tensor) -> None:
        """Refuse a B or a tensor of the recipe that does not match W."""
        tensors = [self.feedback, *self._tensors()]
        if any(t.shape != weight.shape or t.dtype != weight.dtype for t in tensors):
            raise ValueError("B and the renewal's tensors must have the weight's shape and dtype")
        if self.keys is not None and weight.numel() >= 1 << 32:
            raise ValueError("the hash counts elements in 32 bits: split tensors of 2³² or more")

    def compiled(self, weight: torch.Tensor) -> bool:
        """Whether the compiled loops take W and this recipe (contiguous float on the CPU)."""
        return all(
            t.device.type == "cpu"
            and t.dtype in (torch.float32, torch.float64)
            and t.dtype == weight.dtype
            and t.layout == torch.strided
            and t.is_contiguous()
            for t in (weight, self.feedback, *self._tensors())
        )

    def kernel_args(self) -> tuple:
        """The ``renew`` arguments of ``dynalign.kernels``' loops, in the weights' dtype."""
        kind = self.feedback.numpy().dtype.type
        magnitude = self.magnitude if isinstance(self.magnitude, torch.Tensor) else None
        scale = 0.0 if magnitude is not None else float(self.magnitude)
        keys = None
        if self.keys is not None:
            ka, kb = self._keys()
            keys = (np.uint32(multiplier(ka)), np.uint32(kb))
        return (
            _flat(self.feedback),
            None if magnitude is None else _flat(magnitude),
            keys,
            kind(scale),
            kind(2.0**-24),  # the hashed numbers' step: 24 bits, exact in float32
            None if self.offset is None else _flat(self.offset),
            kind(self.alpha),
            True if self.unchanged else None,
        )

    @torch.no_grad()
    def apply(self, weight: torch.Tensor) -> None:
        """Write B from W as it is now."""
        self.check(weight)
        out = self.feedback
        if self.compiled(weight):
            from . import kernels  # imports numba: on first use, not at the CLI's start

            kernels.renew(_flat(weight), torch.get_num_threads(), self.kernel_args())
        elif self.offset is not None:
            torch.add(weight, self.offset, alpha=self.alpha, out=out)
        elif self.keys is not None:
            ka, kb = self._keys()
            u = hashed_uniform(weight.numel(), ka, kb, weight.device).view(weight.shape)
            out.copy_(u.to(out.dtype) * self.magnitude * torch.sign(weight))
        else:
            torch.sign(weight, out=out)
            out.mul_(self.magnitude)

    def _tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.offset, self.magnitude) if isinstance(t, torch.Tensor)]

    def _keys(self) -> tuple[int, int]:
        ka, kb = self.keys
        return int(ka) & 0xFFFFFFFF, int(kb) & 0xFFFFFFFF


def split_owed(
    renewals: list[Renewal] | None, layers: list[FeedbackLayer], measure: bool
) -> tuple[list[Renewal | None] | None, list[Renewal | None]]:
    """This step's renewals split into those written now, in the optimiser's pass, and those
    each layer is owed instead (``FeedbackLayer.defer_renewal``): on a step whose B is not
    measured, the B of a layer whose forward pass sent no error through it. Renewals owed from
    earlier steps are dropped, as B is written whole now or owed afresh; a B that was owed one
    is written whole (an unchanged recipe writes only where W changed sides)."""
    if renewals is None:
        return None, []
    now: list[Renewal | None] = []
    owed: list[Renewal | None] = []
    for renewal, layer in zip(renewals, layers, strict=True):
        stale = layer.take_owed_renewal() is not None
        if renewal is not None and not measure and not layer.feedback_needed:
            now.append(None)
            owed.append(renewal)
            continue
        if stale and renewal is not None and renewal.unchanged:
            renewal = dataclasses.replace(renewal, unchanged=False)
        now.append(renewal)
        owed.append(None)
    return now, owed


def renew(renewals: list[Renewal], weights: Iterable[torch.Tensor]) -> None:
    """Write each B from its W as it is now."""
    for renewal, weight in zip(renewals, weights, strict=True):
        renewal.apply(weight.detach())


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().reshape(-1)
