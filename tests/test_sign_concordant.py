"""Sign-concordant B in one pass (``dynalign.renewal``): the compiled loops against torch's
two-pass and integer paths, brsf's hash against its definition in plain Python ints, and the
hashed numbers' distribution against U(0, 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from dynalign.renewal import Renewal
from dynalign.sign_concordant import hashed_uniform
from dynalign.weight_step import PARALLEL_FROM


def _python_hash(i: int, ka: int, kb: int) -> float:
    """The hash in arbitrary-precision ints, masked by hand: the definition, independently."""

    def mix(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) % 2**32
        x ^= x >> 15
        x = (x * 0x846CA68B) % 2**32
        return x ^ (x >> 16)

    a = (2 * ka + 1) % 2**32  # the Weyl sequence's odd step
    return (mix((i * a + kb) % 2**32) >> 8) / 2**24


def test_torch_path_is_the_hash_as_defined():
    ka, kb = 0xFFFFFFF0, 0xFFFFFF00  # i·a and i·a + kb wrap past 2³² from the first elements
    u = hashed_uniform(40, ka, kb)
    assert u.tolist() == [_python_hash(i, ka, kb) for i in range(40)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_loop_equals_torch_path(dtype, threads, torch_threads):
    """Bit for bit, serial and on threads (the tensor is large enough to run in parallel)."""
    torch_threads(threads)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(PARALLEL_FROM + 1234, generator=g, dtype=dtype)
    w[::97] = 0
    out = torch.empty_like(w)
    Renewal(out, 0.3, (7, 2**32 + 9)).apply(w)  # keys are taken mod 2³²
    expected = hashed_uniform(w.numel(), 7, 9).to(dtype) * 0.3 * torch.sign(w)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["constant", "tensor"])
def test_fixed_magnitudes_equal_torchs_two_passes(kind, dtype, threads, torch_threads):
    """usf's one number and frsf's tensor: sign(W)·m bit for bit, zeros and NaN carried over."""
    torch_threads(threads)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(PARALLEL_FROM + 77, generator=g, dtype=dtype)
    w[::50] = 0
    w[3] = float("nan")
    m = 0.37 if kind == "constant" else torch.rand(w.shape, generator=g, dtype=dtype)
    out = torch.empty_like(w)
    Renewal(out, m).apply(w)
    assert torch.equal(out[4:], (torch.sign(w) * m)[4:])
    assert out[3].isnan() and out[0] == 0


def test_signs_and_bounds_and_the_uncompiled_path():
    """B takes W's sign (0 where W is 0), |B| < bound; a non-contiguous B goes through torch's
    path and gets the same numbers."""
    w = torch.randn(300, 200, dtype=torch.float32)
    w[w.abs() < 0.1] = 0
    contiguous = torch.empty_like(w)
    Renewal(contiguous, 0.5, (1, 2)).apply(w)
    assert torch.equal(torch.sign(contiguous), torch.sign(w))
    assert contiguous.abs().max() < 0.5
    strided = torch.empty(200, 300).t()
    Renewal(strided, 0.5, (1, 2)).apply(w)
    assert torch.equal(strided, contiguous)
    Renewal(strided, 0.25).apply(w)
    assert torch.equal(strided, torch.sign(w) * 0.25)


def test_numbers_are_uniform_and_independent():
    """Kolmogorov-Smirnov against U(0, 1); neighbours within a draw, and the same element in
    draws whose keys differ by one, uncorrelated; pairs of neighbours fill the unit square
    evenly (χ² over 16×16 cells)."""
    n = 1 << 20
    a = hashed_uniform(n, 1000, 77).numpy()
    b = hashed_uniform(n, 1001, 78).numpy()
    assert stats.kstest(a, "uniform").pvalue > 1e-3
    assert abs(a.mean() - 0.5) < 6 * (1 / 12 / n) ** 0.5
    for x, y in ((a[:-1], a[1:]), (a, b)):
        assert abs(np.corrcoef(x, y)[0, 1]) < 4 / n**0.5
    cells = np.histogram2d(a[0::2], a[1::2], bins=16, range=[[0, 1], [0, 1]])[0]
    assert stats.chisquare(cells.ravel()).pvalue > 1e-3


def test_draws_are_no_shifted_copies_of_each_other():
    """Draws with either key one apart share almost no values at any shift up to 64 elements;
    the one relation that gives a shifted copy (equal multipliers, second keys a·d apart) is
    what the definition says it is."""
    n, ka, kb = 4000, 100, 3
    a = hashed_uniform(n, ka, kb)
    for other in (hashed_uniform(n, ka + 1, kb), hashed_uniform(n, ka, kb + 1)):
        for d in range(-64, 65):
            x, y = (a[d:], other[: n - d]) if d >= 0 else (a[:d], other[-d:])
            assert (x == y).float().mean() < 0.01, d
    d, step = 5, 2 * ka + 1
    copy = hashed_uniform(n, ka, kb + step * d)
    assert torch.equal(a[d:], copy[:-d])


def test_bad_output_is_refused():
    w = torch.randn(4, 5)
    with pytest.raises(ValueError, match="weight's shape and dtype"):
        Renewal(torch.empty(5, 4), 1.0, (1, 2)).apply(w)
    with pytest.raises(ValueError, match="weight's shape and dtype"):
        Renewal(torch.empty(4, 5, dtype=torch.float64), 1.0, (1, 2)).apply(w)
    with pytest.raises(ValueError, match="weight's shape and dtype"):
        Renewal(torch.empty(5, 4), 1.0).apply(w)
    with pytest.raises(ValueError, match="weight's shape and dtype"):
        Renewal(torch.empty(4, 5), offset=torch.empty(5, 4)).apply(w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_equal_cpu_draws():
    w = torch.randn(1000, 300)
    cpu = torch.empty_like(w)
    Renewal(cpu, 0.2, (11, 12)).apply(w)
    gpu = torch.empty_like(w, device="cuda")
    Renewal(gpu, 0.2, (11, 12)).apply(w.cuda())
    assert torch.equal(gpu.cpu(), cpu)
