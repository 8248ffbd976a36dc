"""Time of one angle probe: the old float32 cosine against ``dynalign.angles.angle``.

The old probe took three float32 dot products (⟨a,b⟩, |a|², |b|²) and atan2(sqrt(1 − c²), c);
the new one is two float64 passes (norms, then |â−b̂|² and |â+b̂|²) in a compiled loop. Both
run on float32 tensors shaped like a 512×3072 and a 512×512 layer's gradients (about 0.06°
apart, where the old one is visibly off, and identical, as under BP), one torch thread, and
each reports the median of many calls (old and new interleaved, so a machine that is busy for
a while slows both alike). The Gram form of the update angle (``gram_angle``, K = x xᵀ now in
float64) is timed against the old float32 one for a batch of 100 rows.

    python benchmarks/angles.py [--calls 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from dynalign.angles import angle, gram_angle
from dynalign.weight_step import host_floats


def old_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle as dynalign computed it before ``dynalign.angles``."""
    a, b = a.reshape(-1), b.reshape(-1)
    ab, aa, bb = host_floats(torch.dot(a, b), torch.dot(a, a), torch.dot(b, b))
    if ab > 0 and ab * ab > (1 - 1e-12) * aa * bb and (a is b or torch.equal(a, b)):
        return 0.0
    if aa == 0 or bb == 0:
        return math.nan
    cos = min(1.0, max(-1.0, ab / math.sqrt(aa * bb)))
    return math.degrees(math.atan2(math.sqrt(1 - cos * cos), cos))


def median_times(fns, args, calls: int) -> list[float]:
    times = [[] for _ in fns]
    for _ in range(calls):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(*args)
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def old_gram_angle(rule_delta: torch.Tensor, bp_delta: torch.Tensor, x: torch.Tensor) -> float:
    """The Gram form of the update angle as dynalign computed it before (K in float32)."""
    gram = x @ x.T
    rule, bp = rule_delta.double().reshape(-1), bp_delta.double().reshape(-1)
    k_rule = (gram @ rule_delta).double().reshape(-1)
    k_bp = (gram @ bp_delta).double().reshape(-1)
    ab, aa, bb = host_floats(torch.dot(rule, k_bp), torch.dot(rule, k_rule), torch.dot(bp, k_bp))
    cos = min(1.0, max(-1.0, ab / math.sqrt(aa * bb)))
    return math.degrees(math.atan2(math.sqrt(1 - cos * cos), cos))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"median of {args.calls} calls, {torch.get_num_threads()} torch thread(s), float32")
    widths = (22, 9, 9, 8, 10, 10)
    header = ("", "old (ms)", "new (ms)", "new/old", "old (°)", "new (°)")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))

    def row(label, old_fn, new_fn, inputs):
        new_fn(*inputs)  # compile (or load the cached kernel) outside the timing
        old, new = median_times([old_fn, new_fn], inputs, args.calls)
        print(
            f"{label:>22} {old * 1e3:9.3f} {new * 1e3:9.3f} {new / old:8.2f} "
            f"{old_fn(*inputs):10.6f} {new_fn(*inputs):10.6f}"
        )

    for shape in [(512, 3072), (512, 512)]:
        a = torch.randn(shape, generator=g)
        b = a + 1e-3 * torch.randn(shape, generator=g)  # about 0.06° apart
        label = "×".join(map(str, shape))
        row(f"angle {label}", old_angle, angle, (a, b))
        row(f"identical {label}", old_angle, angle, (a, a.clone()))
    for n_in, n_out in [(3072, 512), (512, 512)]:
        rows = 100
        x = torch.randn(rows, n_in, generator=g)
        d1 = torch.randn(rows, n_out, generator=g)
        d2 = d1 + 1e-3 * torch.randn(rows, n_out, generator=g)
        row(f"gram R={rows} {n_in}→{n_out}", old_gram_angle, gram_angle, (d1, d2, x))


if __name__ == "__main__":
    main()
