"""The weight sweep of ``dynalign.weight_step`` as compiled loops (numba), on one thread or on
torch's threads.

The weights are cut into fixed blocks of ``BLOCK`` elements; each block writes one row of
float64 partial sums, and the rows are added in block order, so the values do not depend on
how many threads ran. On several threads the blocks are shared out a few at a time. Within a
block the sign flips and zeros are counted in a loop of their own on the weights' own dtype
(float32 compares, eight at a time), then the sums run in float64: counted together, the
counts halved the speed of the sums. This module imports numba, so it is imported on first
use, off the CLI's start.

reassoc lets the compiler vectorise the sums within a block; no other fast-math, so NaN
compares stay false and zeros keep their sign, and the counts are exact.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

#: elements per block: large enough to stream at full speed, small enough that the blocks
#: spread evenly over the threads; the counts of a block are exact in float32 (below 2²⁴)
BLOCK = 16384
#: elements from which the sweep runs on several threads (below, starting them costs more)
PARALLEL_FROM = 1 << 18

_jit = {"cache": True, "nogil": True, "fastmath": {"reassoc"}}


def blocks(n: int) -> int:
    """How many blocks cover ``n`` elements."""
    return -(-n // BLOCK)


def sweep(before: np.ndarray, after: np.ndarray, feedback: np.ndarray | None, threads: int):
    """|W|², |W − W_before|², sign flips, zeros, ⟨W, B⟩, |B|² (zeros without ``feedback``) on
    up to ``threads`` threads."""
    partial = np.empty((blocks(after.size), 6))
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    if threads < 2 or after.size < PARALLEL_FROM:
        _sweep_serial(before, after, feedback, partial)
    else:
        numba.set_num_threads(threads)
        with numba.parallel_chunksize(4):  # a few blocks at a time, not one half per thread
            _sweep_parallel(before, after, feedback, partial)
    return partial.sum(axis=0)


@numba.njit(inline="always", **_jit)
def _sweep_block(before, after, feedback, partial, k) -> None:
    """The six sums of ``sweep`` over block k (counts as float64). Squares and products of
    float32 values are exact in float64."""
    lo = k * BLOCK
    hi = min(lo + BLOCK, after.size)
    one, nought = np.float32(1), np.float32(0)
    flips = zeros = nought
    for i in range(lo, hi):
        a, b = after[i], before[i]
        flips += one if ((b > 0) & (a < 0)) | ((b < 0) & (a > 0)) else nought
        zeros += one if a == 0 else nought
    weight_sq = update_sq = feedback_dot = feedback_sq = 0.0
    for i in range(lo, hi):
        a, b = np.float64(after[i]), np.float64(before[i])
        weight_sq += a * a
        d = b - a
        update_sq += d * d
        if feedback is not None:
            f = np.float64(feedback[i])
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
