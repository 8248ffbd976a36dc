"""Sign-concordant feedback written in one pass: B = m·sign(W) (0 where W is 0), with m one
number (usf), a fixed tensor (frsf) or uniform random numbers drawn afresh (brsf).

torch needs two passes (sign, then multiply); a compiled loop needs one, on torch's threads
for large layers. brsf redraws every magnitude at every step: two million numbers for a 3×512
net, and torch's CPU generator (a serial Mersenne twister) makes one every 3.5 ns, a third of
a training step. Here number i of a draw is a hash of (i, two 32-bit keys) instead, so the
numbers of a draw do not depend on each other: the loop vectorises, fuses the sign, and gives
the same values on any device and thread count. The keys come from the rule's torch
generator, two per layer per step, so checkpoints (which save that generator) resume the
same stream.

The hash is one round of a 32-bit integer finaliser (xorshift-multiply, constants from Wellons'
hash search, bias ≈ 0.17 over its full 2³² domain) over a Weyl sequence: h = f(i·a + key_b) with
the odd multiplier a = 2·key_a + 1 (a counter hashed by a finaliser, as SplitMix does). Two draws
could only repeat each other, shifted by d elements, if their multipliers were equal and their
second keys a·d apart: for a 3×512 net's keys drawn at random, a chance below 1 in 2⁴⁰. u is the
top 24 bits of h, times 2⁻²⁴: uniform on [0, 1) in steps of 2⁻²⁴, exact in float32 and float64.
(The two rounds used before, f(f(i + key_a) ⊕ key_b), cost 0.35 ms more a step on that net.)
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

#: the finaliser's multipliers (xorshift-multiply constants from a published hash search)
_M1, _M2 = 0x7FEB352D, 0x846CA68B
_U = np.uint32
_MASK = 0xFFFFFFFF

_jit = {"cache": True, "nogil": True}


def signed_(out: torch.Tensor, weight: torch.Tensor, magnitude: float | torch.Tensor) -> None:
    """Fill ``out`` with magnitude·sign(weight); ``magnitude`` one number or a tensor of the
    weight's shape (its values taken as they are, non-negative by the caller's choice)."""
    _check(out, weight)
    tensor = isinstance(magnitude, torch.Tensor)
    if not _compiled(out, weight, *([magnitude] if tensor else [])):
        torch.sign(weight, out=out)
        out.mul_(magnitude)
        return
    w, o = _flat(weight), _flat(out)
    if tensor:
        _launch(_tensor_serial, _tensor_parallel, w, o, _flat(magnitude))
    else:
        _launch(_constant_serial, _constant_parallel, w, o, o.dtype.type(magnitude))


def signed_uniform_(out: torch.Tensor, weight: torch.Tensor, keys, bound: float) -> None:
    """Fill ``out`` with u·bound·sign(weight), u the hashed uniform number of each element
    under the two ``keys`` (taken mod 2³²)."""
    _check(out, weight)
    if weight.numel() >= 1 << 32:
        raise ValueError("the hash counts elements in 32 bits: split tensors of 2³² or more")
    ka, kb = (int(k) & _MASK for k in keys)
    if not _compiled(out, weight):
        u = hashed_uniform(weight.numel(), ka, kb, weight.device).view(weight.shape)
        out.copy_(u.to(out.dtype) * bound * torch.sign(weight))
        return
    kind = out.numpy().dtype.type  # the arithmetic in the weights' dtype, as torch's path
    args = (_U(_multiplier(ka)), _U(kb), kind(2.0**-24), kind(bound))
    _launch(_hashed_serial, _hashed_parallel, _flat(weight), _flat(out), *args)


def hashed_uniform(n: int, key_a: int, key_b: int, device=None) -> torch.Tensor:
    """The numbers of the compiled loop, as float64, from torch's integer operations (any
    device): the path for GPU tensors, and the loop's independent check."""

    def mix(x: torch.Tensor) -> torch.Tensor:
        x = x ^ (x >> 16)
        x = (x * _M1) & _MASK
        x = x ^ (x >> 15)
        x = (x * _M2) & _MASK
        return x ^ (x >> 16)

    i = torch.arange(n, dtype=torch.int64, device=device)
    # int64 products wrap modulo 2⁶⁴, which keeps their low 32 bits exact
    h = mix((i * _multiplier(key_a) + (key_b & _MASK)) & _MASK)
    return (h >> 8).to(torch.float64) * 2.0**-24


def _multiplier(key_a: int) -> int:
    """The Weyl sequence's odd step from the first key (distinct for keys below 2³¹ apart)."""
    return (2 * key_a + 1) & _MASK


def _check(out: torch.Tensor, weight: torch.Tensor) -> None:
    if out.shape != weight.shape or out.dtype != weight.dtype:
        raise ValueError("out must have the weight's shape and dtype")


def _compiled(*tensors: torch.Tensor) -> bool:
    """Whether the compiled loops take these tensors (contiguous float on the CPU)."""
    return all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and t.is_contiguous()
        for t in tensors
    ) and all(t.dtype == tensors[0].dtype for t in tensors)


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().reshape(-1)


def _launch(serial, parallel, w: np.ndarray, *args) -> None:
    """``serial``, or ``parallel`` on torch's threads for a large layer."""
    from .weight_step import PARALLEL_FROM

    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if threads > 1 and w.size >= PARALLEL_FROM:
        numba.set_num_threads(threads)
        parallel(w, *args)
    else:
        serial(w, *args)


@numba.njit(inline="always", **_jit)
def _signed(x, v):
    """v·sign(x): x·v where x is 0 (or NaN), so zeros and NaN carry over as torch's do."""
    return v if x > 0 else (-v if x < 0 else x * v)


@numba.njit(inline="always", **_jit)
def _mix(x):
    x = _U(x ^ (x >> _U(16)))
    x = _U(x * _U(_M1))
    x = _U(x ^ (x >> _U(15)))
    x = _U(x * _U(_M2))
    return _U(x ^ (x >> _U(16)))


@numba.njit(inline="always", **_jit)
def _hashed(i, a, kb, step, bound):
    """Element i's u·bound: 24 bits are exact in float32, converted through int32 (one
    instruction), then scaled in the type of ``step`` and ``bound`` (the weights')."""
    h = _mix(_U(_U(_U(i) * a) + kb))
    return np.float32(np.int32(h >> _U(8))) * step * bound


@numba.njit(**_jit)
def _constant_serial(w, out, c) -> None:
    for i in range(w.size):
        out[i] = _signed(w[i], c)


@numba.njit(parallel=True, **_jit)
def _constant_parallel(w, out, c) -> None:
    for i in prange(w.size):
        out[i] = _signed(w[i], c)


@numba.njit(**_jit)
def _tensor_serial(w, out, m) -> None:
    for i in range(w.size):
        out[i] = _signed(w[i], m[i])


@numba.njit(parallel=True, **_jit)
def _tensor_parallel(w, out, m) -> None:
    for i in prange(w.size):
        out[i] = _signed(w[i], m[i])


@numba.njit(**_jit)
def _hashed_serial(w, out, a, kb, step, bound) -> None:
    for i in range(w.size):
        out[i] = _signed(w[i], _hashed(i, a, kb, step, bound))


@numba.njit(parallel=True, **_jit)
def _hashed_parallel(w, out, a, kb, step, bound) -> None:
    for i in prange(w.size):
        out[i] = _signed(w[i], _hashed(i, a, kb, step, bound))
