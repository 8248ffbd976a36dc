"""How a layer's weights moved in one step: norms, sign flips and zeros, in one sweep.

These reductions run over every weight on every probe step. Done as separate tensor
operations, each one streams the whole weight matrix from memory again (or writes a
temporary as large as it), and for a 512×3072 layer that made them the larger part of a probe
step. On the CPU compiled loops (``dynalign.kernels``) do all of them in a single pass over W
before, W after and B, block by block, with float64 accumulators, on torch's threads for a
large layer (the values do not depend on the thread count); under SGD the same loop runs inside
the optimiser's step (``dynalign.measured_step``), which spares the copy of W before it. Other
devices (CUDA) run plain tensor expressions, where memory bandwidth is not the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class WeightStep:
    """Reductions over one layer's weights for one step."""

    weight_sq: float  # |W|² after the step
    update_sq: float  # |W_after − W_before|²
    sign_flips: int  # weights negative on one side of the step and positive on the other
    zeros: int  # weights exactly zero after the step
    feedback_dot: float | None  # ⟨W_after, B⟩; None without a feedback tensor
    feedback_sq: float | None  # |B|²
    #: |∂W|², the rule's gradient that the step applied, where the optimiser's own pass summed
    #: it (``dynalign.measured_step``); None where the sweep did not see the gradient
    gradient_sq: float | None = None

    @classmethod
    def from_sums(cls, sums, gradient_sq: float | None = None) -> WeightStep:
        """From a sweep's six sums, in the order of the fields (the last two None without B)."""
        weight_sq, update_sq, flips, zeros, feedback_dot, feedback_sq = sums
        return cls(
            float(weight_sq),
            float(update_sq),
            int(flips),
            int(zeros),
            None if feedback_dot is None else float(feedback_dot),
            None if feedback_sq is None else float(feedback_sq),
            None if gradient_sq is None else float(gradient_sq),
        )


def weight_step(
    before: torch.Tensor, after: torch.Tensor, feedback: torch.Tensor | None = None
) -> WeightStep:
    """Reductions over W before and after a step (and B, when given) in one pass over memory."""
    tensors = [t for t in (before, after, feedback) if t is not None]
    if all(_sweepable(t, after.dtype) for t in tensors):
        arrays = [t.detach().reshape(-1).numpy() for t in tensors]
        values = _cpu_sweep(arrays[0], arrays[1], arrays[2] if feedback is not None else None)
    else:
        values = _torch(before, after, feedback)
    return WeightStep.from_sums(values)


def _sweepable(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return (
        t.device.type == "cpu"
        and t.dtype == dtype
        and t.dtype in (torch.float32, torch.float64)
        and t.is_contiguous()
    )


#: elements from which the compiled loops run on torch's threads, when it has several (below,
#: starting the threads costs more than they save)
PARALLEL_FROM = 1 << 18


def _cpu_sweep(before: np.ndarray, after: np.ndarray, feedback: np.ndarray | None) -> tuple:
    """The compiled sweep, on torch's threads for a large layer."""
    from . import kernels  # imports numba: on first use, not at the CLI's start

    values = kernels.sweep(before, after, feedback, torch.get_num_threads())
    return (*values[:4], None, None) if feedback is None else tuple(values)


def _torch(before, after, feedback) -> tuple:
    """The same reductions as tensor expressions, brought to the host in one transfer."""
    b, a = before.detach().reshape(-1), after.detach().reshape(-1)
    wide = torch.float64 if a.dtype == torch.float64 else torch.float32
    aw = a.to(wide)
    update = b.to(wide) - aw
    values = [
        torch.dot(aw, aw),
        torch.dot(update, update),
        torch.count_nonzero((b > 0) & (a < 0)) + torch.count_nonzero((b < 0) & (a > 0)),
        a.numel() - torch.count_nonzero(a),
    ]
    if feedback is not None:
        fw = feedback.detach().reshape(-1).to(wide)
        values += [torch.dot(aw, fw), torch.dot(fw, fw)]
    host = host_floats(*values)
    return (*host, None, None) if feedback is None else tuple(host)


def norms(*tensors: torch.Tensor) -> list[float]:
    """Euclidean norms of tensors, accumulated in float64 without a float64 copy of them.

    CPU float32/float64 tensors go through one compiled loop each: a layer's outputs can be
    millions of values (a ConvNet's feature maps), where the tensor expression converting them
    to float64 on the way took several times as long. Others: one transfer from the device.
    """
    if all(_sweepable(t, t.dtype) for t in tensors):
        kernel = _compiled_square_sum()
        return [float(np.sqrt(kernel(t.detach().reshape(-1).numpy()))) for t in tensors]
    return host_floats(*(torch.linalg.vector_norm(t, dtype=torch.float64) for t in tensors))


def _square_sum(a: np.ndarray) -> float:
    total = 0.0
    for i in range(a.size):
        x = np.float64(a[i])  # float32 squares are exact in float64
        total += x * x
    return total


_SQUARE_SUM = None


def _compiled_square_sum():
    """``_square_sum`` compiled (once per process, cached on disk); numba imported here."""
    global _SQUARE_SUM
    if _SQUARE_SUM is None:
        import numba

        _SQUARE_SUM = numba.njit(cache=True, nogil=True, fastmath={"reassoc"})(_square_sum)
    return _SQUARE_SUM


def host_floats(*values: torch.Tensor) -> list[float]:
    """0-d tensors as Python floats (float64), in one transfer from the device."""
    return torch.stack([v.to(torch.float64) for v in values]).tolist()
