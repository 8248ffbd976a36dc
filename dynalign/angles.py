"""Angles between tensors, accurate near 0° and 180°.

The arccos (or atan2(sqrt(1 − c²), c)) of a cosine from float32 dot products loses the angle
near 0°: with c = cos θ ≈ 1 − θ²/2, float32 rounding of the products (about 1e-7 relative) is
as large as θ²/2 for θ ≈ 0.03°, so a true 0.01° reads as 0° or 0.014°. Learning rules that
align closely (Kolen–Pollack, weight mirrors, BP itself) live there. Here the angle is Kahan's

    θ = 2·atan2(|â − b̂|, |â + b̂|),   â = a/|a|,  b̂ = b/|b|,

with every sum in float64: |â − b̂| is formed from the differences themselves, so it keeps its
relative accuracy however small it is (likewise |â + b̂| near 180°). Away from 0° and 180° the
products ⟨a,b⟩, |a|², |b|² in float64 give the angle as accurately, in one pass instead of
two. On the CPU compiled loops (numba) form the sums, on torch's threads for large tensors
(``dynalign.kernels``); other devices run tensor expressions in float64 and bring the sums to
the host in one transfer.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .weight_step import host_floats

__all__ = ["angle", "angle_and_norms", "angle_from_products", "gram_angle"]


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle between two tensors seen as flat vectors, in degrees (``angle_and_norms``)."""
    return angle_and_norms(a, b)[0]


def angle_and_norms(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """(degrees, |a|², |b|²) of two tensors seen as flat vectors, the squares in float64.

    Within about 8° of 0° and 180° (``NEAR``) the angle is 2·atan2(|â−b̂|, |â+b̂|); elsewhere
    it comes from the products ⟨a,b⟩, |a|², |b|² (``angle_from_products``), which there lose
    nothing: their relative rounding moves the angle by about that much times cot θ. All sums
    are float64, so the result is good to about 1e-13 relative at any angle (for float32
    inputs, against the exact angle of their values). CPU float32/float64 tensors of one dtype
    go through compiled passes (the products, then, near 0° or 180° only, |â−b̂|² and
    |â+b̂|²); other devices and dtypes take float64 tensor expressions with one transfer to
    the host.

    NaN angle if either vector is zero or not finite (float64 inputs beyond about 1e154, whose
    squares overflow, count as not finite). Bitwise-equal inputs give exactly 0.0: they are
    compared element by element only when their squared norms agree exactly, so unequal
    inputs do not pay for the comparison.
    """
    if a.numel() != b.numel():
        raise ValueError(f"angle of tensors with {a.numel()} and {b.numel()} elements")
    if a is b:
        (sq,) = host_floats(torch.linalg.vector_norm(a.detach(), dtype=torch.float64) ** 2)
        return (0.0 if 0 < sq < math.inf else math.nan), sq, sq
    a, b = a.detach().reshape(-1), b.detach().reshape(-1)
    if a.numel() == 0:
        return math.nan, 0.0, 0.0
    if _compiled_path(a, b):
        return _numba_angle(a.numpy(), b.numpy())
    return _torch_angle(a, b)


def _compiled_path(*tensors: torch.Tensor) -> bool:
    """Can the compiled loops of ``dynalign.kernels`` read these tensors as they are (CPU,
    contiguous, one float32 or float64 dtype)?"""
    dtype = tensors[0].dtype
    return dtype in (torch.float32, torch.float64) and all(
        t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() for t in tensors
    )


#: |cos θ| above which an angle is formed from difference vectors rather than from products
#: (within about 8° of 0° or 180°, where the cosine's rounding would be amplified)
NEAR = 0.99


def _numba_angle(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """The passes of ``dynalign.kernels``, in blocks summed in a fixed order (on torch's
    threads for a large tensor), so the angle does not depend on the thread count."""
    from . import kernels  # imports numba: on first use, not at the CLI's start

    threads = torch.get_num_threads()
    aa, bb, ab = (float(v) for v in kernels.products(a, b, threads))
    if not (0 < aa < math.inf and 0 < bb < math.inf and math.isfinite(ab)):
        return math.nan, aa, bb
    if abs(ab) < NEAR * math.sqrt(aa) * math.sqrt(bb):
        return angle_from_products(ab, aa, bb), aa, bb
    if aa == bb and _compiled_same()(a, b):  # equal norms: perhaps the same vector (BP)
        return 0.0, aa, bb
    dd, ss = kernels.normalised_sums(a, b, 1.0 / math.sqrt(aa), 1.0 / math.sqrt(bb), threads)
    return _from_sums(aa, bb, dd, ss), aa, bb


def _from_sums(aa: float, bb: float, dd: float, ss: float) -> float:
    """Degrees from |a|², |b|², |â−b̂|², |â+b̂|²."""
    if not (0 < aa < math.inf and 0 < bb < math.inf):
        return math.nan
    return math.degrees(2.0 * math.atan2(math.sqrt(dd), math.sqrt(ss)))


def _torch_angle(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """The same sums as float64 tensor expressions on the tensors' device, one transfer."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    aa, bb = torch.dot(a64, a64), torch.dot(b64, b64)
    ua, ub = a64 / aa.sqrt(), b64 / bb.sqrt()
    d, s = ua - ub, ua + ub
    aa, bb, dd, ss = host_floats(aa, bb, torch.dot(d, d), torch.dot(s, s))
    if dd != 0 and aa == bb and torch.equal(a, b):  # unequal rounding of an equal pair
        dd = 0.0
    return _from_sums(aa, bb, dd, ss), aa, bb


_SAME = None


def _compiled_same():
    """``_same`` compiled (once per process, cached on disk); numba imported here."""
    global _SAME
    if _SAME is None:
        import numba

        _SAME = numba.njit(cache=True, nogil=True)(_same)
    return _SAME


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a == b element by element, in blocks, stopping after the first unequal one."""
    block = 4096
    for start in range(0, a.size, block):
        # slices indexed from 0 (see dynalign.kernels._products_block)
        x, y = a[start : start + block], b[start : start + block]
        unequal = 0
        for i in range(x.size):
            unequal += x[i] != y[i]
        if unequal:
            return False
    return True


def angle_from_products(ab: float, aa: float, bb: float) -> float:
    """Degrees from the inner products ⟨a,b⟩, |a|², |b|²; NaN when either vector is zero.

    Computed as atan2(sqrt(|a|²|b|² − ⟨a,b⟩²), ⟨a,b⟩) with the difference formed exactly
    (the products are split into exact double-float pairs), so this adds no rounding error
    that matters: the result is as accurate as the products given. That is the limit of any
    formula on products: near 0° (and 180°) |a|²|b|² − ⟨a,b⟩² ≈ θ²|a|²|b|² is a difference of
    nearly equal numbers, so a relative error ε in the products becomes a relative error of
    about ε/θ² in θ. Products accumulated in float64 from float32 data (ε ≈ 1e-15, as the
    weight sweep does) give about 1e-7 relative at 0.01°; float32 products (ε ≈ 1e-7) are
    useless below about 1°. Where the vectors themselves are at hand, use ``angle``.
    """
    if not (0 < aa < math.inf and 0 < bb < math.inf and math.isfinite(ab)):
        return math.nan
    # scale by powers of two (exact) so that nothing below can overflow or underflow
    ea, eb = math.frexp(aa)[1] & ~1, math.frexp(bb)[1] & ~1
    aa, bb, ab = math.ldexp(aa, -ea), math.ldexp(bb, -eb), math.ldexp(ab, -(ea + eb) // 2)
    p, p_err = _two_product(aa, bb)
    q, q_err = _two_product(ab, ab)
    sin_sq = max((p - q) + (p_err - q_err), 0.0)  # p − q is exact where it cancels
    return math.degrees(math.atan2(math.sqrt(sin_sq), ab))


def _two_product(x: float, y: float) -> tuple[float, float]:
    """x·y as p + e exactly, p = fl(x·y) (Dekker; |x|, |y| ≤ 4 here, so no overflow)."""
    p = x * y
    xh, xl = _split(x)
    yh, yl = _split(y)
    return p, ((xh * yh - p) + xh * yl + xl * yh) + xl * yl


def _dots(k: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """⟨k, a⟩ and ⟨k, b⟩ summed in float64: on the CPU one compiled pass over the three
    (no product tensors), elsewhere tensor expressions with one transfer."""
    if _compiled_path(k, a, b):
        from . import kernels  # imports numba: on first use, not at the CLI's start

        sums = kernels.dots(
            k.reshape(-1).numpy(), a.reshape(-1).numpy(), b.reshape(-1).numpy(),
            torch.get_num_threads(),
        )  # fmt: skip
        return float(sums[0]), float(sums[1])
    f64 = torch.float64
    ka, kb = host_floats(torch.sum(k * a, dtype=f64), torch.sum(k * b, dtype=f64))
    return ka, kb


def _split(x: float) -> tuple[float, float]:
    t = 134217729.0 * x  # 2^27 + 1 (Veltkamp)
    hi = t - (t - x)
    return hi, x - hi


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """K = x xᵀ of a layer's input rows, formed by BLAS in the run's precision."""
    rows = x.detach().reshape(x.shape[0], -1)
    return rows @ rows.T


def gram_angle(
    rule_delta: torch.Tensor,
    bp_delta: torch.Tensor,
    x: torch.Tensor,
    gram: torch.Tensor | None = None,
) -> float:
    """Angle between the weight gradients δ₁ᵀx and δ₂ᵀx (see ``gram_angle_and_norms``)."""
    return gram_angle_and_norms(rule_delta, bp_delta, x, gram)[0]


def gram_angle_and_norms(
    rule_delta: torch.Tensor,
    bp_delta: torch.Tensor,
    x: torch.Tensor,
    gram: torch.Tensor | None = None,
    rule_sq: float | None = None,
) -> tuple[float, float, float]:
    """(degrees, |G₁|, |G₂|) of the weight gradients G₁ = δ₁ᵀx and G₂ = δ₂ᵀx, unformed.

    A Linear layer's gradient over the R rows of a batch is G = δᵀx (δ: R × n_out, x:
    R × n_in), so with the R×R Gram matrix K = x xᵀ, ⟨δ₁ᵀx, δ₂ᵀx⟩ = Σ δ₁ ∘ (K δ₂). With
    n₁ = |G₁| = sqrt(Σ δ₁ ∘ Kδ₁) (n₂ likewise), d = δ₁/n₁ − δ₂/n₂ and s = δ₁/n₁ + δ₂/n₂ give
    |Ĝ₁ − Ĝ₂|² = Σ d ∘ Kd and |Ĝ₁ + Ĝ₂|² = Σ s ∘ Ks, and the angle is 2·atan2 of their roots:
    stable near 0° like ``angle``. Only the smaller of the two needs that care: the other is at
    least 2 and is taken as 4 minus it (their sum is 4), which saves a product with K.

    Where precision is lost is the difference d (or s) of two nearly equal vectors: it is
    formed in float64. The products with K (``gram_matrix``, pass ``gram`` where it is already
    formed) run in the run's precision: they carry no cancellation, so their relative rounding
    (~1e-7 in float32) reaches the angle as about that, not amplified; the sums are float64.

    ``rule_sq``: |G₁|² where it is known already (the optimiser's pass sums the gradient it
    applies, formed by the rule's backward pass), in float64; K δ₁ is then not formed, a third
    of the products with K. It must be the square norm of δ₁ᵀx itself (not of a clipped one).

    Equal deltas give exactly 0.0 without the Gram matrix, and NaN norms (NaN there only when
    the delta or x is all zero or not finite; a nonzero δ whose gradient δᵀx is zero is not
    looked for). Otherwise NaN when either gradient is zero or not finite.
    """
    rows = x.shape[0]
    d1 = rule_delta.detach().reshape(rows, -1)
    d2 = bp_delta.detach().reshape(rows, -1)
    if d1.shape != d2.shape:
        raise ValueError(f"gram_angle of deltas shaped {tuple(d1.shape)} and {tuple(d2.shape)}")
    if torch.equal(d1, d2):  # same error, same input: the same gradient
        sums = host_floats(d1.abs().sum(dtype=torch.float64), x.abs().sum(dtype=torch.float64))
        return (0.0 if all(0 < v < math.inf for v in sums) else math.nan), math.nan, math.nan
    if gram is None:
        gram = gram_matrix(x)
    f64 = torch.float64
    if rule_sq is None:
        n = d1.shape[1]
        k = gram @ torch.cat([d1, d2], dim=1).to(gram.dtype)
        k1, k2 = k[:, :n], k[:, n:]
        sq1, sq2, cross = host_floats(
            torch.sum(d1 * k1, dtype=f64),
            torch.sum(d2 * k2, dtype=f64),
            torch.sum(d1 * k2, dtype=f64),
        )
    else:
        k2 = gram @ d2.to(gram.dtype)
        sq2, cross = _dots(k2, d2, d1)
        sq1 = rule_sq
    # the sign of the cross product says which of Ĝ₁ ∓ Ĝ₂ is shorter
    norms = math.sqrt(max(sq1, 0.0)), math.sqrt(max(sq2, 0.0))
    if not (0 < sq1 < math.inf and 0 < sq2 < math.inf and math.isfinite(cross)):
        return math.nan, *norms
    if abs(cross) < NEAR * norms[0] * norms[1]:
        # away from 0° and 180° the products' relative rounding ε (~1e-7) moves the angle by
        # about ε·cot θ radians, a few millionths of it at most: no difference vector needed
        return angle_from_products(cross, sq1, sq2), *norms
    sign = -1.0 if cross < 0 else 1.0
    v = d1.to(f64) / norms[0] - d2.to(f64) * (sign / norms[1])
    (vv,) = host_floats(torch.sum(v * (gram @ v.to(gram.dtype)), dtype=f64))
    vv = min(max(vv, 0.0), 2.0)
    dd, ss = (4.0 - vv, vv) if cross < 0 else (vv, 4.0 - vv)
    return _from_sums(sq1, sq2, dd, ss), *norms
