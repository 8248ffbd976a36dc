"""Where a probe step's time goes: step_time.py's (d) against plain torch, piece by piece.

The same 3x512 MLP on 3072-d inputs, batch 100, SGD with momentum, as ``step_time.py``:
plain torch BP with its forward pass, backward pass and optimiser step timed apart, and
dynalign FA with every probe on every step, a store written, a snapshot and a checkpoint every
100 steps, with each piece of its step timed by wrapping the function that does it (the
library's code is not changed; a wrapper costs well under a microsecond a call). Interleaved
rounds of 100 steps; each figure is the median over rounds of the milliseconds a step spends
in that piece. Indented pieces are parts of the piece above them. "Between the pieces" is the
step's time less every timed piece: the trainer's and recorder's own Python (the row, the
step context, the loops over probes and layers); being the median step less the sum of the
pieces' medians, it also carries their difference, a tenth of a millisecond or two where
rounds vary.

    python benchmarks/probe_breakdown.py [--steps 100] [--rounds 7] [--threads 1] [--inputs 3072]

``--inputs 64`` gives the net of the ``fc3-fa`` preset on the 8x8 digits (what
``record_end_to_end.py`` runs), where a step is small and its fixed costs weigh more.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import step_time
import torch
from step_time import (
    BATCH,
    batches_of,
    dynalign_stepper,
    plain_mlp,
    synthetic,
    time_steps,
)
from torch import nn

import dynalign.probes
import dynalign.reference
import dynalign.trainer

#: milliseconds spent in each piece during the current round
spent: dict[str, float] = defaultdict(float)


def timed(name: str, fn):
    """``fn`` that adds its time to ``spent[name]``."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += (time.perf_counter() - start) * 1e3

    return wrapper


def timed_context(name: str, make):
    """A context manager factory like ``make`` whose body's time goes to ``spent[name]``."""

    @contextlib.contextmanager
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            with make(*args, **kwargs) as value:
                yield value
        finally:
            spent[name] += (time.perf_counter() - start) * 1e3

    return wrapper


def plain_stepper(data):
    """step_time.py's plain torch step, with its three parts timed."""
    torch.manual_seed(0)
    model = plain_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(x)
        t01 = time.perf_counter()
        loss = loss_fn(out, y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        value = loss.item()
        t3 = time.perf_counter()
        spent["plain: forward pass"] += (t01 - t0) * 1e3
        spent["plain: loss"] += (t1 - t01) * 1e3
        spent["plain: backward"] += (t2 - t1) * 1e3
        spent["plain: optimiser step"] += (t3 - t2) * 1e3
        return value

    return step


#: the pieces of a probe step, in the order a step meets them (indented: part of the one above)
PROBE_PIECES = {
    "forward": "forward pass, layers' inputs and outputs kept",
    "loss": "loss",
    "accuracy": "the batch's accuracy counted",
    "host": "loss and accuracy brought to the host",
    "backward": "both backward passes (the rule's, with every layer's error)",
    "reference": "  the reference (true-gradient) pass",
    "optimiser": "optimiser's pass with the weight sweep",
    "AngleProbe": "probe: update, delta and feedback angles",
    "gram": "  Gram products x·xᵀ",
    "gram_products": "  products with the Gram matrix, float64 dots",
    "full": "  angles of formed gradients (where the Gram form costs more)",
    "delta": "  delta angles",
    "WeightChangeProbe": "probe: weight change (norms, sign flips, zeros)",
    "ConstraintProbe": "probe: sign constraint counts",
    "ActivationProbe": "probe: activation norms",
    "row": "the row handed to the store",
    "snapshots": "snapshots (every 100 steps)",
    "keep_safe": "checkpoints and commits (every 100 steps)",
    "settle": "waiting for the store's background writes (round's end)",
}


def wrap(owner, attribute: str, piece: str, context: bool = False) -> None:
    """Replace ``owner.attribute`` by its timed self (a missing one raises: the library's code
    moved, and the wrapper list must follow it)."""
    original = getattr(owner, attribute)
    setattr(owner, attribute, (timed_context if context else timed)(PROBE_PIECES[piece], original))


def instrumented_probe_stepper(data, store: Path):
    """step_time.py's (d), with every piece of its step wrapped by ``timed``."""
    step, writer = dynalign_stepper(data, "fa", 1, store)
    trainer = step.trainer
    wrap(trainer.model, "forward", "forward")
    wrap(trainer.model, "loss_terms", "loss")
    wrap(trainer.recorder.scalars, "tensors", "accuracy")
    wrap(dynalign.trainer, "host_floats", "host")
    wrap(dynalign.reference, "backward", "backward")
    wrap(dynalign.reference, "exact_gradients", "reference", context=True)
    wrap(dynalign.trainer, "measured_step", "optimiser")
    for probe in trainer.recorder.probes:
        wrap(probe, "compute", type(probe).__name__)
    wrap(dynalign.probes, "gram_matrix", "gram")
    wrap(dynalign.probes, "gram_angle_and_norms", "gram_products")
    wrap(dynalign.probes, "angle_and_norms", "full")
    wrap(dynalign.probes, "angle", "delta")
    wrap(writer, "append_step", "row")
    wrap(trainer.recorder, "take_snapshots", "snapshots")
    wrap(trainer, "keep_safe", "keep_safe")
    wrap(step, "settle", "settle")
    return step


def run_round(step, batches, steps: int) -> tuple[float, dict[str, float]]:
    """Milliseconds per step in all and in each piece, over ``steps`` steps."""
    spent.clear()
    total = time_steps(step, batches, steps) * 1e3
    return total, {name: ms / steps for name, ms in spent.items()}


def order(variant: str):
    """Sort key: the pieces in the order a step meets them, each part under its whole."""
    if variant == "plain":
        return lambda piece: 0
    names = list(PROBE_PIECES.values())
    return lambda piece: names.index(piece)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--inputs", type=int, default=step_time.N_IN, help="input features")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    step_time.N_IN = args.inputs  # both nets are built from it (plain_mlp reads it)
    with tempfile.TemporaryDirectory(prefix="dynalign-breakdown-") as folder:
        breakdown(args, Path(folder) / "d.zarr")


def breakdown(args: argparse.Namespace, store: Path) -> None:
    """Time both steps in interleaved rounds and print each piece; ``store`` is (d)'s."""
    data = synthetic(BATCH * 10, args.inputs)
    batches = batches_of(data)
    variants = {"plain": plain_stepper(data), "probe": instrumented_probe_stepper(data, store)}
    # warm-up: first calls allocate and pick kernels, and the first checkpoint into each of
    # the store's two slots creates its arrays (about 0.1 s, once a run): not a step's cost
    run_round(variants["plain"], batches, 5)
    run_round(variants["probe"], batches, 205)
    untimed = [piece for piece in PROBE_PIECES.values() if piece not in spent]
    if untimed:  # a wrapped function the step no longer calls: its time would go unseen
        raise SystemExit(f"these pieces were never called, update the wrappers: {untimed}")
    totals: dict[str, list[float]] = defaultdict(list)
    pieces: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            total, parts = run_round(step, batches, args.steps)
            totals[name].append(total)
            for piece, ms in parts.items():
                pieces[name][piece].append(ms)
    med = {name: statistics.median(values) for name, values in totals.items()}
    print(
        f"where a probe step's time goes: 3x512 MLP, {args.inputs}-d inputs, batch {BATCH}, "
        f"{torch.get_num_threads()} thread(s), {args.rounds} interleaved rounds x {args.steps} "
        "steps; medians over rounds, ms per step"
    )
    for name in variants:
        print(f"  {name + ' step':<66} {med[name]:7.2f}")
        outer = 0.0
        for piece in sorted(pieces[name], key=order(name)):
            ms = statistics.median(pieces[name][piece])
            outer += 0.0 if piece.startswith("  ") else ms
            print(f"    {piece.removeprefix('plain: '):<64} {ms:7.2f}")
        print(f"    {'between the pieces':<64} {med[name] - outer:7.2f}")
    extra = med["probe"] - med["plain"]
    print(f"  a probe step adds {extra:.2f} ms: ratio {med['probe'] / med['plain']:.2f}")


if __name__ == "__main__":
    main()
