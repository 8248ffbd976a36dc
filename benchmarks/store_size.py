"""Store size per snapshot schedule: the study's 3x512 FA MLP recorded for a number of steps under
each schedule, one after another; prints MB on disk per 1,000 steps and for the whole run.

Schedules: every 100 steps (the old default), the default (log-spaced within
probes.snapshot_budget) and the same in float16. The default's target: the study's protocol
on Fashion-MNIST (10,000 training images, 60 epochs, 6,000 steps) writes <= 50 MB; run it
with `--epochs 60`.

    python benchmarks/store_size.py [--epochs 10] [--data fashion-mnist]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

SCHEDULES = {
    "every 100 steps": {"probes.snapshot_every": 100},
    "log-spaced, 40 MB budget (default)": {},
    "log-spaced, 40 MB budget, float16": {"probes.snapshot_dtype": "float16"},
}
TARGET_MB = 50.0


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data", default="fashion-mnist")
    args = parser.parse_args()

    import torch

    from dynalign.config import build_config
    from dynalign.reader import open_run
    from dynalign.record import record

    torch.set_num_threads(1)
    base = {
        "data.name": args.data,
        "data.n_train": 10_000,
        "data.n_val": 1_000,
        "train.epochs": args.epochs,
    }
    print(f"3x512 FA MLP on {args.data}, 10,000 images, {args.epochs} epochs")
    with tempfile.TemporaryDirectory() as folder:
        for name, overrides in SCHEDULES.items():
            config = build_config("fc3-fa", None, {**base, **overrides})
            path = Path(folder) / "run.zarr"
            result = record(config, path, overwrite=True, progress=False)
            run = open_run(path)
            snapshots = run["snapshots/fc1"].ds.sizes["snapshot"]
            mb = size_mb(path)
            line = (
                f"{name:38s} {snapshots:3d} snapshots  {mb:7.1f} MB  "
                f"{1000 * mb / result.steps:7.1f} MB per 1,000 steps"
            )
            if not overrides:
                mark = "met" if mb <= TARGET_MB else "NOT met"
                line += f"  (target <= {TARGET_MB:g} MB for the run: {mark})"
            print(line, flush=True)


if __name__ == "__main__":
    main()
