"""Compiled loops (numba) over large tensors, on one thread or on torch's threads: the weight
sweep of ``dynalign.weight_step``, the same sweep inside SGD's update (``dynalign.measured_step``,
which can also write a rule's renewed B, ``dynalign.renewal``), B's renewal on its own, and the
two passes of ``dynalign.angles.angle``.

The vectors are cut into fixed blocks of ``BLOCK`` elements; each block writes one row of
float64 partial sums, and the rows are added in block order, so the values do not depend on
how many threads ran. On several threads the blocks are shared out a few at a time. Within a
block of the sweep the sign flips and zeros are counted in a loop of their own on the weights'
own dtype (float32 compares, eight at a time), then the sums run in float64: counted together,
the counts halved the speed of the sums. This module imports numba, so it is imported on first
use, off the CLI's start.

reassoc lets the compiler vectorise the sums within a block; no other fast-math, so NaN
compares stay false and zeros keep their sign, and the counts are exact.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange, types
from numba.extending import intrinsic, overload

from .sign_concordant import M1, M2
from .weight_step import PARALLEL_FROM

#: elements per block: large enough to stream at full speed, small enough that the blocks
#: spread evenly over the threads; the counts of a block are exact in float32 (below 2²⁴)
BLOCK = 16384

#: ``renew`` arguments of the loops for no B to write: out, magnitude, keys, scale, step,
#: offset, alpha (see ``_renewed``), and ``flips_only`` (see ``_writes_feedback``)
NO_RENEWAL = (None, None, None, 0.0, 0.0, None, 0.0, None)

_jit = {"cache": True, "nogil": True, "fastmath": {"reassoc"}}
_U = np.uint32


#: what a pass without sums returns: summing an empty array took 1 µs, half of a bias's pass
_NOTHING = np.empty(0)


def blocks(n: int) -> int:
    """How many blocks cover ``n`` elements."""
    return -(-n // BLOCK)


def parallel(n: int, threads: int) -> bool:
    """Whether ``n`` elements are worth running on ``threads`` threads."""
    return threads > 1 and n >= PARALLEL_FROM


def _run(kernels: tuple, n: int, width: int, threads: int, *arrays) -> np.ndarray:
    """The (serial, parallel) pair ``kernels`` over the blocks of ``n`` elements, with
    ``width`` partial sums per block; their totals, added in block order."""
    partial = np.empty((blocks(n), width))
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    if not parallel(n, threads):
        kernels[0](*arrays, partial)
    else:
        numba.set_num_threads(threads)
        with numba.parallel_chunksize(4):  # a few blocks at a time, not one half per thread
            kernels[1](*arrays, partial)
    return partial.sum(axis=0) if width else _NOTHING


def sweep(before: np.ndarray, after: np.ndarray, feedback: np.ndarray | None, threads: int):
    """|W|², |W − W_before|², sign flips, zeros, ⟨W, B⟩, |B|² (zeros without ``feedback``) on
    up to ``threads`` threads."""
    return _run((_sweep_serial, _sweep_parallel), after.size, 6, threads, before, after, feedback)


def sgd_sweep(
    weight, velocity, grad, feedback, lr, momentum, decay, threads: int, renew=NO_RENEWAL,
    measure: bool = True,
):  # fmt: skip
    """SGD's step of one weight tensor, in place, and the six sums of ``sweep`` over W before
    and after it (and B), then |grad|², in one pass. ``velocity`` None: SGD without momentum.
    ``lr``, ``momentum`` and ``decay`` in the weights' dtype (see ``_sgd_block``). ``renew``:
    B written from W after the step in the same pass (``Renewal.kernel_args``), the B of the
    sums then; ``feedback`` must be None with it. ``measure`` False: the step alone, no sums
    (an empty array): where the tensors are still in cache from the backward pass, the sums'
    float64 arithmetic, not memory, would set the pace."""
    return _run(
        (_sgd_serial, _sgd_parallel), weight.size, 7 if measure else 0, threads,
        weight, velocity, grad, feedback, lr, momentum, None if decay == 0 else decay, *renew,
    )  # fmt: skip


def renew(weight, threads: int, renew) -> None:
    """B written from W as ``renew`` (``Renewal.kernel_args``) says, in one pass: every
    element (``flips_only`` applies to the update's pass only)."""
    _run((_renew_serial, _renew_parallel), weight.size, 0, threads, weight, *renew[:7])


def products(a: np.ndarray, b: np.ndarray, threads: int) -> np.ndarray:
    """|a|², |b|² and ⟨a, b⟩ in float64 (the first pass of ``angle``)."""
    return _run((_products_serial, _products_parallel), a.size, 3, threads, a, b)


def dots(k: np.ndarray, a: np.ndarray, b: np.ndarray, threads: int) -> np.ndarray:
    """⟨k, a⟩ and ⟨k, b⟩ in float64, in one pass over the three (the Gram form's sums)."""
    return _run((_dots_serial, _dots_parallel), k.size, 2, threads, k, a, b)


def normalised_sums(a: np.ndarray, b: np.ndarray, ia: float, ib: float, threads: int):
    """|â − b̂|² and |â + b̂|² with â = a·ia, b̂ = b·ib (the second pass of ``angle``)."""
    return _run((_normalised_serial, _normalised_parallel), a.size, 2, threads, a, b, ia, ib)


@numba.njit(inline="always", **_jit)
def _sweep_block(before, after, feedback, partial, k) -> None:
    """The six sums of ``sweep`` over block k (counts as float64). Squares and products of
    float32 values are exact in float64."""
    lo = k * BLOCK
    hi = min(lo + BLOCK, after.size)
    after, before = after[lo:hi], before[lo:hi]  # see _products_block
    fb = _block_of(feedback, lo, hi)
    one, nought = np.float32(1), np.float32(0)
    flips = zeros = nought
    for i in range(after.size):
        a, b = after[i], before[i]
        flips += one if ((b > 0) & (a < 0)) | ((b < 0) & (a > 0)) else nought
        zeros += one if a == 0 else nought
    sums = (0.0, 0.0, 0.0, 0.0)
    for i in range(after.size):
        sums = _add_sums(sums, after[i], before[i], fb, i)
    partial[k, 0], partial[k, 1], partial[k, 2] = sums[0], sums[1], flips
    partial[k, 3], partial[k, 4], partial[k, 5] = zeros, sums[2], sums[3]


def _block_of(a, lo, hi):
    """``a[lo:hi]``, or None for no array, typed so that numba drops the None branches."""
    return None if a is None else a[lo:hi]


@overload(_block_of, inline="always")
def _block_of_compiled(a, lo, hi):
    if isinstance(a, types.NoneType):
        return lambda a, lo, hi: None
    return lambda a, lo, hi: a[lo:hi]


@numba.njit(**_jit)
def _add_sums(sums, after, before, feedback, i):
    """(|W|², |W − W_before|², ⟨W, B⟩, |B|²) with one weight added, in float64 (squares and
    products of float32 values are exact there); the last two stay 0 without B. Compiled on its
    own for each type of ``feedback`` (so its None branch goes), then inlined by LLVM."""
    a, b = np.float64(after), np.float64(before)
    d = b - a
    weight_sq, update_sq = sums[0] + a * a, sums[1] + d * d
    if feedback is None:
        return weight_sq, update_sq, sums[2], sums[3]
    f = np.float64(feedback[i])
    return weight_sq, update_sq, sums[2] + a * f, sums[3] + f * f


@numba.njit(**_jit)
def _sweep_serial(before, after, feedback, partial) -> None:
    for k in range(partial.shape[0]):
        _sweep_block(before, after, feedback, partial, k)


@numba.njit(parallel=True, **_jit)
def _sweep_parallel(before, after, feedback, partial) -> None:
    for k in prange(partial.shape[0]):
        _sweep_block(before, after, feedback, partial, k)


@intrinsic
def _fma(typingctx, a, b, c):
    """a·b + c rounded once: the fused multiply-add of torch's vectorised CPU kernels."""

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@numba.njit(inline="always", **_jit)
def _sgd_block(
    weight, velocity, grad, feedback, lr, momentum, decay,
    out, magnitude, keys, scale, step_, offset, alpha, flips_only, partial, k,
) -> None:  # fmt: skip
    """SGD's update of block k, in the operations of torch's ``_single_tensor_sgd`` on the CPU,
    and the sums of ``_sweep_block`` over W before and after it, then |grad|² (the update
    angle's Gram form then needs one product fewer). torch's steps are
    ``g = grad.add(w, alpha=decay)`` (skipped at decay 0), ``v.mul_(momentum).add_(g)``,
    ``w.add_(v, alpha=-lr)``; its vectorised add with alpha is a fused multiply-add, its
    multiplication by a scalar a plain one, so here: g = fma(w, decay, grad), v = v·m + g
    (an add after a rounded product: reassoc does not contract them), w = fma(v, -lr, w).
    ``dynalign.measured_step`` checks the result against torch's before using it. Sign
    changes and zeros are counted in float64 from the conversions the sums make anyway
    (``_opposite``), without a weight decay the decay's branch is compiled out (``decay``
    None): both keep the loop's extra work off a probe step (figures in the README). With
    ``out``, B is renewed from the new W (``_renewed``) and summed as the B of the sums; with
    ``flips_only`` too, only where W left its side of zero (``_writes_feedback``)."""
    lo = k * BLOCK
    hi = min(lo + BLOCK, weight.size)
    w, g = weight[lo:hi], grad[lo:hi]  # see _products_block
    v, fb = _block_of(velocity, lo, hi), _block_of(feedback, lo, hi)
    o, m, d = _block_of(out, lo, hi), _block_of(magnitude, lo, hi), _block_of(offset, lo, hi)
    if partial.shape[1] == 0:  # no sums wanted: the update (and B) alone, lighter on the core
        if out is not None and flips_only is not None:
            _sgd_spans(w, v, g, velocity, lr, momentum, decay, o, m, scale, lo)
            return
        for i in range(w.size):
            after = _sgd_update(w, v, g, velocity, lr, momentum, decay, i)
            if out is not None:
                o[i] = _renewed(after, lo + i, m, keys, scale, step_, d, alpha, i)
        return
    flips = zeros = 0.0
    sums = (0.0, 0.0, 0.0, 0.0)
    grad_sq = 0.0
    for i in range(w.size):
        before = w[i]
        grad_sq += np.float64(g[i]) * np.float64(g[i])
        after = _sgd_update(w, v, g, velocity, lr, momentum, decay, i)
        flips += 1.0 if _opposite(before, after) else 0.0
        zeros += 1.0 if np.float64(after) == 0 else 0.0
        if out is not None:
            if _writes_feedback(flips_only, before, after):
                o[i] = _renewed(after, lo + i, m, keys, scale, step_, d, alpha, i)
            sums = _add_sums(sums, after, before, o, i)
        else:
            sums = _add_sums(sums, after, before, fb, i)
    partial[k, 0], partial[k, 1], partial[k, 2] = sums[0], sums[1], flips
    partial[k, 3], partial[k, 4], partial[k, 5] = zeros, sums[2], sums[3]
    partial[k, 6] = grad_sq


#: elements of W whose B the update's pass rewrites together where one of them changed sides
#: (``_sgd_spans``): four cache lines of float32. Spans of 16 and 32 measured slower on a
#: 512×3072 layer (cold caches, 2.4 and 2.1 against 2.0 ms; without B 1.7, all of B 2.9)
SPAN = 64


@numba.njit(inline="always", **_jit)
def _sgd_spans(w, v, g, velocity, lr, momentum, decay, o, m, scale, lo) -> None:
    """The update of a block, and B (a signed magnitude, ``flips_only``) rewritten in the
    spans of ``SPAN`` elements where W changed sides: B's and the magnitudes' memory is touched
    only there. A write per element that changed sides would still cost a pass over B: the
    compiler makes it a masked vector store, which fetches B's cache lines all the same. In a
    span that it rewrites, B's other elements get the value they already hold."""
    spans = w.size // SPAN
    for k in range(spans + 1):
        start = k * SPAN
        width = SPAN if k < spans else w.size - start
        ws, gs, vs = (
            w[start : start + width],
            g[start : start + width],
            _block_of(v, start, start + width),
        )
        crossed = False
        if width == SPAN:
            for i in range(SPAN):  # a constant count: one vector
                before = ws[i]
                after = _sgd_update(ws, vs, gs, velocity, lr, momentum, decay, i)
                crossed |= _writes_feedback(True, before, after)
        else:
            for i in range(width):
                _sgd_update(ws, vs, gs, velocity, lr, momentum, decay, i)
            crossed = width > 0
        if crossed:
            os_, ms = o[start : start + width], _block_of(m, start, start + width)
            for i in range(width):
                os_[i] = _renewed(ws[i], lo + start + i, ms, None, scale, 0.0, None, 0.0, i)


@numba.njit(inline="always", **_jit)
def _sgd_update(w, v, g, velocity, lr, momentum, decay, i):
    """Weight i's SGD update in place (and its velocity's, with momentum); the new weight.
    ``decay`` None: no weight decay (numba drops the branch, which LLVM left in the loop)."""
    before = w[i]
    step = g[i] if decay is None else _fma(before, decay, g[i])
    if velocity is not None:  # (numba drops the branch for an argument None)
        step = v[i] * momentum + step
        v[i] = step
    after = _fma(step, -lr, before)
    w[i] = after
    return after


@numba.njit(**_jit)
def _sgd_serial(
    weight, velocity, grad, feedback, lr, momentum, decay,
    out, magnitude, keys, scale, step, offset, alpha, flips_only, partial,
) -> None:  # fmt: skip
    for k in range(partial.shape[0]):
        _sgd_block(
            weight, velocity, grad, feedback, lr, momentum, decay,
            out, magnitude, keys, scale, step, offset, alpha, flips_only, partial, k,
        )  # fmt: skip


@numba.njit(parallel=True, **_jit)
def _sgd_parallel(
    weight, velocity, grad, feedback, lr, momentum, decay,
    out, magnitude, keys, scale, step, offset, alpha, flips_only, partial,
) -> None:  # fmt: skip
    for k in prange(partial.shape[0]):
        _sgd_block(
            weight, velocity, grad, feedback, lr, momentum, decay,
            out, magnitude, keys, scale, step, offset, alpha, flips_only, partial, k,
        )  # fmt: skip


def _writes_feedback(flips_only, before, after):
    """Whether the update's pass writes B's element: always, or with ``flips_only`` (a B that
    depends on W's side of zero alone, under an unchanged recipe: usf, frsf) only where W did
    not stay strictly on one side. Elsewhere B already holds the value it would be given, and
    W crosses zero for a small fraction of its elements a step: the pass then reads and writes
    B's memory hardly at all. Chosen at compile time by the type of ``flips_only``."""


@overload(_writes_feedback, inline="always")
def _writes_feedback_compiled(flips_only, before, after):
    if isinstance(flips_only, types.NoneType):
        return lambda flips_only, before, after: True
    return lambda flips_only, before, after: (
        not (((before > 0) & (after > 0)) | ((before < 0) & (after < 0)))
    )


def _opposite(before, after):
    """Whether W went from one side of zero to the other (NaN and zeros on neither side)."""


@overload(_opposite, inline="always")
def _opposite_compiled(before, after):
    if isinstance(before, types.Float) and before.bitwidth == 32:
        # the float64 product of two float32 values is exact: negative exactly when they lie
        # on opposite sides of zero; the compare rides on the sums' conversions to float64
        return lambda before, after: np.float64(before) * np.float64(after) < 0
    return lambda before, after: ((before > 0) & (after < 0)) | ((before < 0) & (after > 0))


def _renewed(after, index, magnitude, keys, scale, step, offset, alpha, i):
    """B's element from W's, as a ``dynalign.renewal.Renewal`` says (chosen by which arguments
    are None, at compile time): W + alpha·offset (Kolen-Pollack), else magnitude·sign(W) with
    the magnitude a tensor's element (frsf), the hashed uniform number of element ``index``
    times ``scale`` (brsf) or ``scale`` itself (usf)."""


@overload(_renewed)
def _renewed_compiled(after, index, magnitude, keys, scale, step, offset, alpha, i):
    if not isinstance(offset, types.NoneType):
        return lambda after, index, magnitude, keys, scale, step, offset, alpha, i: _fma(
            offset[i], alpha, after
        )
    if not isinstance(magnitude, types.NoneType):
        return lambda after, index, magnitude, keys, scale, step, offset, alpha, i: _signed(
            after, magnitude[i]
        )
    if not isinstance(keys, types.NoneType):
        return lambda after, index, magnitude, keys, scale, step, offset, alpha, i: _signed(
            after, _hashed(index, keys[0], keys[1], step, scale)
        )
    return lambda after, index, magnitude, keys, scale, step, offset, alpha, i: _signed(
        after, scale
    )


@numba.njit(**_jit)
def _signed(x, v):
    """v·sign(x): x·v where x is 0 (or NaN), so zeros and NaN carry over as torch's do."""
    return v if x > 0 else (-v if x < 0 else x * v)


@numba.njit(inline="always", **_jit)
def _mix(x):
    """The finaliser of ``dynalign.sign_concordant``'s hash, in uint32."""
    x = _U(x ^ (x >> _U(16)))
    x = _U(x * _U(M1))
    x = _U(x ^ (x >> _U(15)))
    x = _U(x * _U(M2))
    return _U(x ^ (x >> _U(16)))


@numba.njit(inline="always", **_jit)
def _hashed(i, a, kb, step, bound):
    """Element i's u·bound: 24 bits are exact in float32, converted through int32 (one
    instruction), then scaled in the type of ``step`` and ``bound`` (the weights'). u·step is
    exact (step a power of two), so reassoc's freedom to multiply step·bound first cannot
    change the one rounding."""
    h = _mix(_U(_U(_U(i) * a) + kb))
    return np.float32(np.int32(h >> _U(8))) * step * bound


@numba.njit(inline="always", **_jit)
def _renew_block(weight, out, magnitude, keys, scale, step, offset, alpha, k) -> None:
    lo = k * BLOCK
    hi = min(lo + BLOCK, weight.size)
    w, o = weight[lo:hi], out[lo:hi]  # see _products_block
    m, d = _block_of(magnitude, lo, hi), _block_of(offset, lo, hi)
    for i in range(w.size):
        o[i] = _renewed(w[i], lo + i, m, keys, scale, step, d, alpha, i)


@numba.njit(**_jit)
def _renew_serial(weight, out, magnitude, keys, scale, step, offset, alpha, partial) -> None:
    for k in range(partial.shape[0]):
        _renew_block(weight, out, magnitude, keys, scale, step, offset, alpha, k)


@numba.njit(parallel=True, **_jit)
def _renew_parallel(weight, out, magnitude, keys, scale, step, offset, alpha, partial) -> None:
    for k in prange(partial.shape[0]):
        _renew_block(weight, out, magnitude, keys, scale, step, offset, alpha, k)


@numba.njit(inline="always", **_jit)
def _products_block(a, b, partial, k) -> None:
    """The loops of every block run over its slices, indexed from 0: indexing the whole
    arrays from ``lo``, the compiler cannot rule out negative indices (which numba wraps
    around), and the loops ran at a third of the speed."""
    lo = k * BLOCK
    hi = min(lo + BLOCK, a.size)
    a, b = a[lo:hi], b[lo:hi]
    aa = bb = ab = 0.0
    for i in range(a.size):
        x, y = np.float64(a[i]), np.float64(b[i])
        aa += x * x
        bb += y * y
        ab += x * y
    partial[k, 0], partial[k, 1], partial[k, 2] = aa, bb, ab


@numba.njit(**_jit)
def _products_serial(a, b, partial) -> None:
    for k in range(partial.shape[0]):
        _products_block(a, b, partial, k)


@numba.njit(parallel=True, **_jit)
def _products_parallel(a, b, partial) -> None:
    for k in prange(partial.shape[0]):
        _products_block(a, b, partial, k)


@numba.njit(inline="always", **_jit)
def _dots_block(c, a, b, partial, k) -> None:
    lo = k * BLOCK
    hi = min(lo + BLOCK, c.size)
    c, a, b = c[lo:hi], a[lo:hi], b[lo:hi]  # see _products_block
    ca = cb = 0.0
    for i in range(c.size):
        z = np.float64(c[i])
        ca += z * np.float64(a[i])
        cb += z * np.float64(b[i])
    partial[k, 0], partial[k, 1] = ca, cb


@numba.njit(**_jit)
def _dots_serial(c, a, b, partial) -> None:
    for k in range(partial.shape[0]):
        _dots_block(c, a, b, partial, k)


@numba.njit(parallel=True, **_jit)
def _dots_parallel(c, a, b, partial) -> None:
    for k in prange(partial.shape[0]):
        _dots_block(c, a, b, partial, k)


@numba.njit(inline="always", **_jit)
def _normalised_block(a, b, ia, ib, partial, k) -> None:
    lo = k * BLOCK
    hi = min(lo + BLOCK, a.size)
    a, b = a[lo:hi], b[lo:hi]  # see _products_block
    dd = ss = 0.0
    for i in range(a.size):
        x, y = np.float64(a[i]) * ia, np.float64(b[i]) * ib
        d, s = x - y, x + y
        dd += d * d
        ss += s * s
    partial[k, 0], partial[k, 1] = dd, ss


@numba.njit(**_jit)
def _normalised_serial(a, b, ia, ib, partial) -> None:
    for k in range(partial.shape[0]):
        _normalised_block(a, b, ia, ib, partial, k)


@numba.njit(parallel=True, **_jit)
def _normalised_parallel(a, b, ia, ib, partial) -> None:
    for k in prange(partial.shape[0]):
        _normalised_block(a, b, ia, ib, partial, k)
