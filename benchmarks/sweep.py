"""Sweep benchmark: 8 short runs on a 2-worker dask LocalCluster against the same 8 runs one after
another in one process, measured side by side in one invocation.

Prints the speed-up (target >= 1.7 on 2 cores) beside the speed-up of the same runs on plain
processes without dask (the machine's own ceiling), the scheduling overhead per run (target
<= 1 s: the worker time a run costs beyond its own recording), the cluster's start-up, and each
worker's resident memory after each of its runs (target: flat).

    python benchmarks/sweep.py [--runs 8] [--workers 2] [--epochs 24] [--width 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SPEC = """
description = "sweep benchmark: one FA MLP on digits, one run per seed"
n_seeds = {runs}
[model]
depth = 3
width = {width}
[train]
epochs = {epochs}
batch_size = 100
[probes]
every = 1
"""


def serial(spec, root: Path) -> tuple[float, list[float]]:
    """Every run in this process, one after another, as `dynalign record` would."""
    import torch

    from dynalign.record import record

    torch.set_num_threads(1)
    times = []
    began = time.perf_counter()
    for point in spec.points:
        t = time.perf_counter()
        record(point.config, root / f"serial-{point.seed}.zarr", progress=False)
        times.append(time.perf_counter() - t)
    return time.perf_counter() - began, times


def _warm_up(config_json: str, pattern: str) -> None:
    """One run on a worker before the clock starts: imports, and the probe sweep compiled."""
    import os

    import torch

    from dynalign.config import from_json
    from dynalign.record import record

    torch.set_num_threads(1)
    record(from_json(config_json), pattern.format(os.getpid()), progress=False)


def _record_one(config_json: str, store: str) -> None:
    from dynalign.config import from_json
    from dynalign.record import record

    record(from_json(config_json), store, progress=False)


def plain_processes(spec, root: Path, workers: int) -> float:
    """The same runs on ``workers`` plain processes, no dask: what the machine itself allows
    when its cores run at once (shared caches, memory bandwidth, disk), the ceiling of any
    scheduler's speed-up here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    warm = str(root / "plain-warm-{}.zarr")
    first = spec.points[0].config_json
    with ProcessPoolExecutor(workers, context, initializer=_warm_up, initargs=(first, warm)) as ex:
        list(ex.map(_record_one, [first] * workers, [warm.format(f"x{i}") for i in range(workers)]))
        t = time.perf_counter()
        stores = [str(root / f"plain-{p.seed}.zarr") for p in spec.points]
        list(ex.map(_record_one, [p.config_json for p in spec.points], stores))
        return time.perf_counter() - t


def parallel(spec, root: Path, workers: int) -> dict:
    from dynalign.sweep import run_study, start_client

    began = time.perf_counter()
    client, cluster = start_client(workers)  # as `dynalign sweep` starts its cluster
    warm = str(root / "warm-{}.zarr")
    client.run(_warm_up, spec.points[0].config_json, warm)  # as the serial process was warmed
    start = time.perf_counter() - began
    try:
        t = time.perf_counter()
        run_study(spec, root / "study", client=client, progress=False)
        wall = time.perf_counter() - t
    finally:
        client.close()
        cluster.close()
    manifest = json.loads((root / "study" / "study.json").read_text())
    return {"start": start, "wall": wall, "runs": manifest["runs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()

    from dynalign.spec import parse_spec

    spec = parse_spec(SPEC.format(runs=args.runs, width=args.width, epochs=args.epochs))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from dynalign.record import record  # warm: imports and the compiled probe sweep

        record(spec.points[0].config, root / "warm.zarr", progress=False)
        serial_wall, serial_times = serial(spec, root)
        result = parallel(spec, root, args.workers)
        plain = plain_processes(spec, root, args.workers)

    runs = result["runs"]
    busy = sum(r["seconds"] for r in runs)
    overhead = (result["wall"] * args.workers - busy) / len(runs)
    print(
        f"{len(runs)} runs of {spec.points[0].config.train.epochs} epochs (3x{args.width} FA MLP,"
        f" digits, every probe every step), {args.workers} workers"
    )
    print(
        f"serial, one process:        {serial_wall:7.1f} s  ({serial_wall / len(runs):.2f} s/run)"
    )
    print(
        f"sweep, {args.workers}-worker cluster:     {result['wall']:7.1f} s  "
        f"(+{result['start']:.1f} s to start the cluster and warm its workers)"
    )
    print(f"speed-up:                   {serial_wall / result['wall']:7.2f}   (target >= 1.7)")
    print(f"  with the cluster start:   {serial_wall / (result['wall'] + result['start']):7.2f}")
    print(
        f"  {args.workers} plain processes, no dask: {serial_wall / plain:5.2f}   (this machine's "
        "ceiling for any scheduler)"
    )
    print(
        f"run time in a worker:       {busy / len(runs):7.2f} s/run "
        f"(serial {serial_wall / len(runs):.2f})"
    )
    print(
        f"scheduling overhead:        {overhead:7.2f} s/run   (target <= 1 s: worker time "
        "beyond the runs' own)"
    )
    by_worker: dict[int, list[float]] = {}
    for run in sorted(runs, key=lambda r: r["finished"] or ""):
        by_worker.setdefault(run.get("worker_pid", 0), []).append(
            run.get("worker_memory_mb") or 0.0
        )
    for i, series in enumerate(by_worker.values()):
        growth = series[-1] - series[0]
        print(
            f"worker {i + 1} resident MB after each run: "
            f"{', '.join(f'{m:.0f}' for m in series)}  (first to last {growth:+.1f} MB)"
        )


if __name__ == "__main__":  # the cluster's worker processes import this file: only run once
    main()
