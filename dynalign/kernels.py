"""Compiled loops (numba) of the probes on large tensors, on one thread or on torch's threads:
the weight sweep of ``dynalign.weight_step`` and the two passes of ``dynalign.angles.angle``.

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
from numba import prange

from .weight_step import PARALLEL_FROM

#: elements per block: large enough to stream at full speed, small enough that the blocks
#: spread evenly over the threads; the counts of a block are exact in float32 (below 2²⁴)
BLOCK = 16384

_jit = {"cache": True, "nogil": True, "fastmath": {"reassoc"}}


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
    return partial.sum(axis=0)


def sweep(before: np.ndarray, after: np.ndarray, feedback: np.ndarray | None, threads: int):
    """|W|², |W − W_before|², sign flips, zeros, ⟨W, B⟩, |B|² (zeros without ``feedback``) on
    up to ``threads`` threads."""
    return _run((_sweep_serial, _sweep_parallel), after.size, 6, threads, before, after, feedback)


def squared_norms(a: np.ndarray, b: np.ndarray, threads: int) -> np.ndarray:
    """|a|² and |b|² in float64 (the first pass of ``angle``)."""
    return _run((_norms_serial, _norms_parallel), a.size, 2, threads, a, b)


def normalised_sums(a: np.ndarray, b: np.ndarray, ia: float, ib: float, threads: int):
    """|â − b̂|² and |â + b̂|² with â = a·ia, b̂ = b·ib (the second pass of ``angle``)."""
    return _run((_normalised_serial, _normalised_parallel), a.size, 2, threads, a, b, ia, ib)


@numba.njit(inline="always", **_jit)
def _sweep_block(before, after, feedback, partial, k) -> None:
    """The six sums of ``sweep`` over block k (counts as float64). Squares and products of
    float32 values are exact in float64."""
    lo = k * BLOCK
    hi = min(lo + BLOCK, after.size)
    after, before = after[lo:hi], before[lo:hi]  # see _norms_block
    if feedback is not None:  # (a new name: numba drops these branches for an argument None)
        fb = feedback[lo:hi]
    one, nought = np.float32(1), np.float32(0)
    flips = zeros = nought
    for i in range(after.size):
        a, b = after[i], before[i]
        flips += one if ((b > 0) & (a < 0)) | ((b < 0) & (a > 0)) else nought
        zeros += one if a == 0 else nought
    weight_sq = update_sq = feedback_dot = feedback_sq = 0.0
    for i in range(after.size):
        a, b = np.float64(after[i]), np.float64(before[i])
        weight_sq += a * a
        d = b - a
        update_sq += d * d
        if feedback is not None:
            f = np.float64(fb[i])
            feedback_dot += a * f
            feedback_sq += f * f
    partial[k, 0], partial[k, 1], partial[k, 2] = weight_sq, update_sq, flips
    partial[k, 3], partial[k, 4], partial[k, 5] = zeros, feedback_dot, feedback_sq


@numba.njit(**_jit)
def _sweep_serial(before, after, feedback, partial) -> None:
    for k in range(partial.shape[0]):
        _sweep_block(before, after, feedback, partial, k)


@numba.njit(parallel=True, **_jit)
def _sweep_parallel(before, after, feedback, partial) -> None:
    for k in prange(partial.shape[0]):
        _sweep_block(before, after, feedback, partial, k)


@numba.njit(inline="always", **_jit)
def _norms_block(a, b, partial, k) -> None:
    """The loops of every block run over its slices, indexed from 0: indexing the whole
    arrays from ``lo``, the compiler cannot rule out negative indices (which numba wraps
    around), and the loops ran at a third of the speed."""
    lo = k * BLOCK
    hi = min(lo + BLOCK, a.size)
    a, b = a[lo:hi], b[lo:hi]
    aa = bb = 0.0
    for i in range(a.size):
        x, y = np.float64(a[i]), np.float64(b[i])
        aa += x * x
        bb += y * y
    partial[k, 0], partial[k, 1] = aa, bb


@numba.njit(**_jit)
def _norms_serial(a, b, partial) -> None:
    for k in range(partial.shape[0]):
        _norms_block(a, b, partial, k)


@numba.njit(parallel=True, **_jit)
def _norms_parallel(a, b, partial) -> None:
    for k in prange(partial.shape[0]):
        _norms_block(a, b, partial, k)


@numba.njit(inline="always", **_jit)
def _normalised_block(a, b, ia, ib, partial, k) -> None:
    lo = k * BLOCK
    hi = min(lo + BLOCK, a.size)
    a, b = a[lo:hi], b[lo:hi]  # see _norms_block
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
