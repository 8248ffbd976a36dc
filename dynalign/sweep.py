"""Run a study: every (arm, seed) of a spec as a task on dask.distributed, one store each.

The driver (this process) owns the study directory: it holds an OS lock on it, writes the
manifest and submits the runs; workers only write their runs' stores. A run's task records it,
or resumes it from its last checkpoint when its store exists and is unfinished, so a worker that
dies takes nothing with it: the scheduler hands the task to another worker, which continues the
run. Running a study again continues it: finished runs are kept, the rest resumed or started.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .manifest import FINISHED, merge, now, read_manifest, write_manifest
from .spec import StudySpec
from .store import StoreError
from .writer_lock import LockHeld, WriterLock

#: how often the progress line is refreshed and the scheduler asked what is running
POLL_SECONDS = 1.0
#: dask defaults that cost a training loop of many small torch calls ~10% (measured): the
#: statistical profiler interrupts the run's thread every 10 ms, and a 64 kB malloc trim
#: threshold hands freed tensor memory back to the system at once, to be mapped again
WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}
#: submissions of one run before it counts as failed (each lost worker costs one)
MAX_ATTEMPTS = 4


class SweepError(ValueError):
    """A study that cannot start (directory, scheduler); one line naming the fix."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the study; every store and the manifest are consistent."""


# ----------------------------------------------------------------------------- the task


def run_point(store: str, config_json: str) -> dict[str, Any]:
    """Record one run into ``store``, or continue it there; runs on a worker.

    A finished store is left as it is. An unfinished one (its worker was killed, or the study
    stopped) is resumed from its last checkpoint; a store whose config is not this run's is
    refused, never overwritten. Returns the run's status, message, steps and timing.
    """
    import torch

    from .config import ConfigError, from_json
    from .data import DataError
    from .reader import root_attrs
    from .record import record, resume

    torch.set_num_threads(1)  # one run per worker process, one core each
    path = Path(store)
    started, clock = now(), time.perf_counter()
    out = {"started": started, "pid": os.getpid(), "ran": True}
    try:
        if path.is_dir() and any(path.iterdir()):
            attrs = root_attrs(path)
            if attrs.get("config") != config_json:
                raise StoreError(
                    f"{path} holds a run with another config; move it away or run the study "
                    "into another --out"
                )
            if attrs.get("status") in FINISHED:
                committed = attrs.get("committed") or {}
                return {
                    **out,
                    "ran": False,
                    "status": attrs["status"],
                    "message": str(attrs.get("message", "")),
                    "steps": int(committed.get("steps", 0)),
                    "seconds": None,
                    "finished": None,
                }
            result = resume(path, progress=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            result = record(from_json(config_json), path, overwrite=path.exists(), progress=False)
        status, message, steps = result.status, result.message, result.steps
    except (ConfigError, DataError, StoreError) as err:
        status, message, steps = "failed", str(err), 0
    except Exception as err:  # the store is closed as failed; the study goes on
        status, message, steps = "failed", f"{type(err).__name__}: {err}", 0
    return {
        **out,
        "status": status,
        "message": message,
        "steps": int(steps),
        "seconds": round(time.perf_counter() - clock, 3),
        "finished": now(),
        "worker_memory_mb": _resident_mb(),
    }


def _resident_mb() -> float | None:
    """The worker's resident memory after the run: flat across runs, or something leaks."""
    try:
        import psutil  # a dependency of distributed

        return round(psutil.Process().memory_info().rss / 2**20, 1)
    except Exception:
        return None


# ----------------------------------------------------------------------------- the driver


@dataclass
class StudyRun:
    """One study being run: its spec, directory, lock and manifest."""

    spec: StudySpec
    directory: Path
    lock: WriterLock
    manifest: dict[str, Any]
    index: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

    def save(self) -> None:
        write_manifest(self.directory, self.manifest)

    def counts(self) -> dict[str, int]:
        runs = self.manifest["runs"]
        return {s: sum(r["status"] == s for r in runs) for s in {r["status"] for r in runs}}


@dataclass
class StudyResult:
    """What a study ended with: counts of run statuses and the time it took."""

    directory: Path
    total: int
    counts: dict[str, int]
    seconds: float
    skipped: int  # runs already finished before this sweep began

    @property
    def ok(self) -> bool:
        return self.counts.get("completed", 0) + self.counts.get("diverged", 0) == self.total


def claim_study(spec: StudySpec, out: str | Path) -> StudyRun:
    """Create or reopen the study directory, lock it for this driver and merge the manifest."""
    directory = Path(out).expanduser()
    if directory.exists() and not directory.is_dir():
        raise SweepError(f"--out {directory} is a file; give a directory for the study")
    existing = read_manifest(directory) if directory.is_dir() else None
    if existing is None and directory.is_dir() and any(directory.iterdir()):
        raise SweepError(
            f"--out {directory} is a folder that holds no study (no study.json); give a new or "
            "empty directory"
        )
    directory.mkdir(parents=True, exist_ok=True)
    try:
        lock = WriterLock(directory, wait=0.5)
    except LockHeld:
        raise SweepError(
            f"another sweep is running the study in {directory}; wait for it to end"
        ) from None
    manifest = merge(directory, existing, spec)
    study = StudyRun(spec, directory, lock, manifest)
    study.index = {(r["arm"], r["seed"]): r for r in manifest["runs"]}
    _reconcile(study)
    study.save()
    return study


def _reconcile(study: StudyRun) -> None:
    """Take each run's status from its store, the truth: a killed sweep leaves the manifest
    behind its runs."""
    from .reader import root_attrs

    for run in study.manifest["runs"]:
        path = study.directory / run["store"]
        if not (path.is_dir() and any(path.iterdir())):
            if run["status"] not in ("pending", "failed"):
                run["status"] = "pending"
            continue
        try:
            attrs = root_attrs(path)
        except StoreError as err:
            run["status"], run["message"] = "failed", str(err)
            continue
        status = attrs.get("status")
        if status in FINISHED or status in ("failed", "interrupted"):
            run["status"] = status
            run["message"] = str(attrs.get("message", ""))
        elif status == "running":  # its worker or sweep was killed: resumed from the checkpoint
            run["status"] = "interrupted"
            run["message"] = "its worker was stopped; the next sweep resumes it"
        committed = attrs.get("committed") or {}
        run["steps"] = int(committed.get("steps", run.get("steps") or 0))


def start_client(workers: int | None = None, scheduler: str | None = None):
    """A dask client: on an existing scheduler, or on a LocalCluster of one-thread processes."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            return Client(scheduler, timeout="10s"), None
        except (OSError, TimeoutError, ValueError) as err:
            raise SweepError(
                f"cannot reach the dask scheduler at {scheduler} ({err}); start one with "
                "`dask scheduler` and workers with `dask worker ADDRESS`, or leave out --scheduler"
            ) from None
    n = workers or os.cpu_count() or 1
    try:
        import bokeh  # noqa: F401  (the dashboard needs it)

        dashboard: str | None = "127.0.0.1:0"
    except ImportError:
        dashboard = None
    with dask.config.set(WORKER_CONFIG):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=dashboard,
            silence_logs=logging.ERROR,
        )
    return Client(cluster), cluster


def run_study(spec: StudySpec, out: str | Path, **kwargs: Any) -> StudyResult:
    """Run every (arm, seed) of ``spec`` into ``out`` (see :func:`run_studies`)."""
    return run_studies([(spec, out)], **kwargs)[0]


def run_studies(
    studies: Sequence[tuple[StudySpec, str | Path]],
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> list[StudyResult]:
    """Run several studies as one pool of tasks (a long run of one overlaps the others').

    client: an existing ``distributed.Client`` (a SLURMCluster's, say); otherwise one is made
    on ``scheduler`` or on a LocalCluster of ``workers`` processes. Ctrl-C raises
    :class:`SweepInterrupted` after cancelling the runs and saving the manifests.
    """
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    claimed: list[StudyRun] = []
    try:
        for spec, out in studies:
            claimed.append(claim_study(spec, out))
        return _run_claimed(claimed, client, workers, scheduler, progress, echo)
    finally:
        for study in claimed:
            study.lock.release()


def _run_claimed(claimed, client, workers, scheduler, progress, echo) -> list[StudyResult]:
    began = time.perf_counter()
    todo = [(s, r) for s in claimed for r in s.manifest["runs"] if r["status"] not in FINISHED]
    skipped = {id(s): sum(r["status"] in FINISHED for r in s.manifest["runs"]) for s in claimed}
    total = sum(len(s.manifest["runs"]) for s in claimed)
    if todo:
        own_cluster = None
        if client is None:
            client, own_cluster = start_client(workers, scheduler)
        try:
            _execute(claimed, todo, client, total, progress, echo)
        finally:
            if own_cluster is not None:
                client.close()
                own_cluster.close()
    seconds = time.perf_counter() - began
    return [
        StudyResult(s.directory, len(s.manifest["runs"]), s.counts(), seconds, skipped[id(s)])
        for s in claimed
    ]


def _submit(client, study: StudyRun, run: dict[str, Any]):
    run["attempts"] = int(run.get("attempts") or 0) + 1
    # its status stays as it was until the task ends: only the store knows when it starts
    key = f"dynalign-run-{run['arm']}-seed{run['seed']}-{uuid.uuid4().hex[:8]}"
    store = str((study.directory / run["store"]).resolve())
    return client.submit(run_point, store, run["config"], key=key, pure=False, retries=0)


def _execute(claimed, todo, client, total, progress, echo) -> None:
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    owner = {}  # future key -> (study, run, future): the future is kept, or dask forgets it
    for study, run in todo:
        future = _submit(client, study, run)
        owner[future.key] = (study, run, future)
    for study in claimed:
        study.save()
    dashboard = getattr(client, "dashboard_link", None)
    line = _Progress(echo, progress, total, dashboard)
    futures = as_completed([f for _, _, f in owner.values()], with_results=False)
    try:
        while True:
            batch = futures.next_batch(block=False)
            if not batch:
                if futures.is_empty():
                    break
                line.show(claimed, _running(client, owner))
                time.sleep(POLL_SECONDS)
                continue
            for future in batch:
                study, run, _ = owner.pop(future.key)
                try:
                    result = future.result()
                except KilledWorker:
                    result = None
                except FutureCancelledError:
                    continue
                except Exception as err:  # the task itself could not run (e.g. not importable)
                    result = {"status": "failed", "message": f"{type(err).__name__}: {err}"}
                if result is None:
                    if run["attempts"] < MAX_ATTEMPTS:
                        retry = _submit(client, study, run)
                        owner[retry.key] = (study, run, retry)
                        futures.add(retry)
                        study.save()
                        continue
                    result = {
                        "status": "failed",
                        "message": f"its worker died {run['attempts']} times; see the dask logs",
                    }
                _finish(run, result)
                study.save()
                line.show(claimed, _running(client, owner))
    except KeyboardInterrupt:
        client.cancel([f for _, _, f in owner.values()])
        for study, run, _ in owner.values():
            store = study.directory / run["store"]
            started = store.is_dir() and any(store.iterdir())
            run["status"] = "interrupted" if started else "pending"
            run["message"] = "the sweep was stopped; run it again to continue" if started else ""
        for study in claimed:
            study.save()
        line.done()
        raise SweepInterrupted() from None
    line.show(claimed, 0)
    line.done()


def _finish(run: dict[str, Any], result: dict[str, Any]) -> None:
    run["status"] = result.get("status", "failed")
    run["message"] = result.get("message", "")
    if result.get("ran", True):
        for key in ("started", "finished", "seconds", "worker_memory_mb"):
            if result.get(key) is not None:
                run[key] = result[key]
        if result.get("pid") is not None:
            run["worker_pid"] = result["pid"]
    if result.get("steps") is not None:
        run["steps"] = result["steps"]


def _running(client, owner) -> int:
    """How many of our runs workers are computing now: those the scheduler has handed to a
    worker, at most one per worker thread (a worker may hold the next task queued)."""
    try:
        processing = client.processing()
        threads = sum(client.nthreads().values())
    except Exception:  # a scheduler that is going away: leave the count out
        return 0
    keys = {k for keys in processing.values() for k in keys}
    return min(threads, sum(1 for key in owner if key in keys))


class _Progress:
    """One line for the whole study: done, running, failed, of total; elapsed; dashboard."""

    def __init__(self, echo, enabled: bool, total: int, dashboard: str | None):
        self.echo, self.enabled, self.total = echo, enabled, total
        self.dashboard, self.began, self.last = dashboard, time.perf_counter(), ""
        self.tty = enabled and sys.stderr.isatty()

    def show(self, claimed, running: int) -> None:
        if not self.enabled:
            return
        runs = [r for s in claimed for r in s.manifest["runs"]]
        done = sum(r["status"] in FINISHED for r in runs)
        failed = sum(r["status"] == "failed" for r in runs)
        text = f"study: {done} done, {running} running, {failed} failed, of {self.total}"
        if self.dashboard:
            text += f"  (dashboard {self.dashboard})"
        if text == self.last and not self.tty:
            return
        self.last = text
        elapsed = _duration(time.perf_counter() - self.began)
        if self.tty:
            sys.stderr.write(f"\r{text}  {elapsed}\033[K")
            sys.stderr.flush()
        else:
            self.echo(f"{text}  {elapsed}")

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(math.floor(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
