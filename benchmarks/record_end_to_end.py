"""End to end: `dynalign record --preset fc3-fa` against the same training in plain torch.

Both run as whole processes (imports, data, training, and for dynalign the store, probes,
snapshots, commits and checkpoints), one torch thread, in interleaved rounds whose order
alternates, so a load change on the machine hits both alike. Prints each round, the median
times and their ratio beside the target (<= 1.25), then the start-up time of
`dynalign --help` and `dynalign presets` (target <= 0.3 s each, median of the runs).

`dynalign` ends with ``gc.freeze()`` (see ``dynalign.cli.main.main``), which a plain script
does not: part of the ratio's gain is the interpreter's shutdown. Each round therefore also
runs the plain script ending the same way (``--freeze-at-exit``), and the ratio against it,
which measures only what dynalign adds, is printed beside the target's.

    python benchmarks/record_end_to_end.py [--rounds 5] [--preset fc3-fa] [--startup-runs 5]
                                           [--set KEY=VALUE ...]

``--set`` passes config overrides to `dynalign record` (``--set probes.every=0``: what the
store and the trainer cost without the probes); the plain script stays as it is, so with
overrides that change the training itself the ratio compares different work.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 1.25
TARGET_STARTUP = 0.3


def dynalign(*args: str) -> list[str]:
    """The installed command, next to this Python (the virtual environment's bin)."""
    return [str(Path(sys.executable).with_name("dynalign")), *args]


def timed(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - began


def end_to_end(rounds: int, preset: str, overrides: list[str]) -> dict[str, float]:
    plain = [sys.executable, str(HERE / "plain_fc3_fa.py"), "--threads", "1"]
    with tempfile.TemporaryDirectory() as folder:
        record = dynalign(
            "record", "--preset", preset, "--threads", "1", "--quiet", "--overwrite",
            "--out", str(Path(folder) / "run.zarr"),
            *(arg for item in overrides for arg in ("--set", item)),
        )  # fmt: skip
        times: dict[str, list[float]] = {"plain": [], "plain_freeze": [], "dynalign": []}
        for i in range(rounds):
            order = [
                ("plain", plain),
                ("dynalign", record),
                ("plain_freeze", [*plain, "--freeze-at-exit"]),
            ]
            for name, command in order if i % 2 == 0 else order[::-1]:
                times[name].append(timed(command))
            print(
                f"round {i + 1}: plain torch {times['plain'][-1]:.2f} s, "
                f"ending with gc.freeze {times['plain_freeze'][-1]:.2f} s, "
                f"dynalign record {times['dynalign'][-1]:.2f} s, "
                f"ratio {times['dynalign'][-1] / times['plain'][-1]:.2f} "
                f"({times['dynalign'][-1] / times['plain_freeze'][-1]:.2f})",
                flush=True,
            )
    return {name: statistics.median(t) for name, t in times.items()}


def startup(runs: int) -> dict[str, float]:
    out = {}
    for args in (("--help",), ("presets",)):
        out["dynalign " + " ".join(args)] = statistics.median(
            timed(dynalign(*args)) for _ in range(runs)
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--preset", default="fc3-fa")
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for record"
    )
    args = parser.parse_args()
    medians = end_to_end(args.rounds, args.preset, args.set)
    ratio = medians["dynalign"] / medians["plain"]
    mark = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(
        f"\nmedian of {args.rounds}: plain torch {medians['plain']:.2f} s (ending with gc.freeze "
        f"{medians['plain_freeze']:.2f} s), dynalign record --preset {args.preset}"
        f"{''.join(f' --set {item}' for item in args.set)} "
        f"{medians['dynalign']:.2f} s\nratio {ratio:.2f} (target <= {TARGET_RATIO}: {mark}); "
        f"against the plain script ending with gc.freeze too: "
        f"{medians['dynalign'] / medians['plain_freeze']:.2f}"
    )
    for name, seconds in startup(args.startup_runs).items():
        mark = "met" if seconds <= TARGET_STARTUP else "NOT met"
        print(f"{name}: {seconds:.2f} s (target <= {TARGET_STARTUP} s: {mark})")


if __name__ == "__main__":
    main()
