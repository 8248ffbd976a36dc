"""The numbers of sign-concordant feedback, B = m·sign(W) (0 where W is 0), with m one number
(usf), a fixed tensor (frsf) or uniform random numbers drawn afresh (brsf).

B is written by ``dynalign.renewal`` (in one compiled pass, or inside the optimiser's; the
hash's compiled form is in ``dynalign.kernels``); this module defines the numbers. brsf redraws
every magnitude at every step: two million numbers for a 3×512 net, and torch's CPU generator (a
serial Mersenne twister) makes one every 3.5 ns, a third of a training step. Here number i of a
draw is a hash of (i, two 32-bit keys) instead, so the numbers of a draw do not depend on each
other: the loop vectorises, fuses the sign, and gives the same values on any device and thread
count. The keys come from the rule's torch generator, two per layer per step, so checkpoints
(which save that generator) resume the same stream.

The hash is one round of a 32-bit integer finaliser (xorshift-multiply, constants from Wellons'
hash search, bias ≈ 0.17 over its full 2³² domain) over a Weyl sequence: h = f(i·a + key_b) with
the odd multiplier a = 2·key_a + 1 (a counter hashed by a finaliser, as SplitMix does). Two
draws could only repeat each other, shifted by d elements, if their multipliers were equal and
their second keys a·d apart: for a 3×512 net's keys drawn at random, a chance below 1 in 2⁴⁰. u
is the top 24 bits of h, times 2⁻²⁴: uniform on [0, 1) in steps of 2⁻²⁴, exact in float32 and
float64. (The two rounds used before, f(f(i + key_a) ⊕ key_b), cost 0.35 ms more a step on that
net.)
"""

from __future__ import annotations

import torch

#: the finaliser's multipliers (xorshift-multiply constants from a published hash search)
M1, M2 = 0x7FEB352D, 0x846CA68B
_MASK = 0xFFFFFFFF


def hashed_uniform(n: int, key_a: int, key_b: int, device=None) -> torch.Tensor:
    """The numbers of the compiled loop, as float64, from torch's integer operations (any
    device): the path for GPU tensors, and the loop's independent check."""

    def mix(x: torch.Tensor) -> torch.Tensor:
        x = x ^ (x >> 16)
        x = (x * M1) & _MASK
        x = x ^ (x >> 15)
        x = (x * M2) & _MASK
        return x ^ (x >> 16)

    i = torch.arange(n, dtype=torch.int64, device=device)
    # int64 products wrap modulo 2⁶⁴, which keeps their low 32 bits exact
    h = mix((i * multiplier(key_a) + (key_b & _MASK)) & _MASK)
    return (h >> 8).to(torch.float64) * 2.0**-24


def multiplier(key_a: int) -> int:
    """The Weyl sequence's odd step from the first key (distinct for keys below 2³¹ apart)."""
    return (2 * key_a + 1) & _MASK
