"""Studies on a real dask.distributed LocalCluster, through the command line: a tiny sweep, a
second sweep that does nothing again, a worker killed mid-run, Ctrl-C, and one driver per study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_durability import assert_consistent, assert_same_run

from dynalign.config import from_json
from dynalign.reader import root_attrs
from dynalign.record import record
from dynalign.spec import SpecError, parse_spec
from dynalign.sweep import SweepError, claim_study
from dynalign.writer_lock import WriterLock

REPO = Path(__file__).resolve().parent.parent
TINY = """
[model]
depth = 2
width = 32
[data]
n_train = 300
n_val = 100
[train]
batch_size = 50
"""


def write_spec(tmp_path: Path, head: str, body: str = "") -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(head + TINY + body)
    return path


def sweep(spec: Path, out: Path, *extra: str, wait: bool = True):
    """``dynalign sweep`` in its own process group (its workers too), as a terminal runs it."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dynalign.cli",
            "sweep",
            str(spec),
            "--out",
            str(out),
            "--workers",
            "2",
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # a shell's background job ignores SIGINT, and children inherit that: undo it, so that
        # Ctrl-C reaches the sweep however the suite was started
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


def manifest(out: Path) -> dict:
    return json.loads((out / "study.json").read_text())


def files_with_times(out: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in (out / "runs").rglob("*")
        if p.is_file()
    }


def test_tiny_sweep_then_again_does_no_finished_run_again(tmp_path):
    spec = write_spec(
        tmp_path,
        "n_seeds = 2\n",
        """
[[arms]]
name = "bp"
"rule.name" = "bp"
"train.epochs" = 1
[[arms]]
name = "fa"
"rule.name" = "fa"
"train.epochs" = 1
[[arms]]
name = "no-data"
"data.name" = "mnist"
"data.data_dir" = "missing-folder"
"train.epochs" = 1
""",
    )
    out = tmp_path / "study"
    code, output = sweep(spec, out)
    assert code == 1, output  # one arm cannot find its data: failed, the others go on
    runs = {(r["arm"], r["seed"]): r for r in manifest(out)["runs"]}
    assert len(runs) == 6
    for arm in ("bp", "fa"):
        for seed in (0, 1):
            run = runs[(arm, seed)]
            assert run["status"] == "completed" and run["attempts"] == 1, run
            assert run["steps"] == 6 and run["seconds"] > 0
            attrs = root_attrs(out / run["store"])
            assert attrs["status"] == "completed"
            config = from_json(attrs["config"])
            assert (config.rule.name, config.train.seed) == (arm, seed)
            assert attrs["config"] == run["config"]
    for seed in (0, 1):
        failed = runs[("no-data", seed)]
        assert failed["status"] == "failed" and "missing-folder" in failed["message"], failed
    assert "4 completed" in output and "2 failed" in output
    assert "dashboard http://" in output

    before = files_with_times(out)
    code, output = sweep(spec, out)
    assert code == 1, output
    assert "4 already finished, kept" in output
    assert files_with_times(out) == before  # no finished store was touched
    again = {(r["arm"], r["seed"]): r for r in manifest(out)["runs"]}
    assert all(again[k]["attempts"] == 1 for k in again if k[0] != "no-data")
    assert all(again[("no-data", s)]["attempts"] == 2 for s in (0, 1))  # failed: tried again


def wait_for(predicate, timeout: float, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended first:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def running_store(out: Path, min_epochs: int):
    """A run store being written with at least ``min_epochs`` committed epochs, and its writer."""
    for store in sorted((out / "runs").glob("*/seed-*.zarr")):
        try:
            attrs = root_attrs(store)
        except Exception:
            continue
        committed = attrs.get("committed") or {}
        if attrs.get("status") == "running" and committed.get("epochs", 0) >= min_epochs:
            return store, attrs["writer"]["pid"]
    return None


LONG = (
    "n_seeds = 1\n"
    + TINY.replace("[train]\n", "[train]\nepochs = 40\n")
    + """
[probes]
snapshot_every = 20
checkpoint_seconds = 0
[[arms]]
name = "bp"
"rule.name" = "bp"
[[arms]]
name = "fa"
"rule.name" = "fa"
"""
)


def test_a_worker_killed_mid_sweep_leaves_every_run_intact(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(LONG)
    out = tmp_path / "study"
    proc = sweep(spec, out, "--quiet", wait=False)
    store, pid = wait_for(lambda: running_store(out, 3), 180, proc)
    assert pid != proc.pid  # the run is written by a worker process, not the driver
    os.kill(pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    runs = {r["arm"]: r for r in manifest(out)["runs"]}
    killed = runs[store.parent.name]
    assert killed["status"] == "completed", killed  # the scheduler gave it to another worker
    assert root_attrs(store)["writer"]["pid"] != pid
    assert all(r["status"] == "completed" for r in runs.values())
    for run in runs.values():  # each equals a run recorded in one go, bit for bit
        reference = tmp_path / f"reference-{run['arm']}.zarr"
        record(from_json(run["config"]), reference, progress=False)
        assert_same_run(out / run["store"], reference)


def test_ctrl_c_stops_the_sweep_cleanly_and_the_next_one_finishes_it(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(LONG)
    out = tmp_path / "study"
    proc = sweep(spec, out, "--quiet", wait=False)
    wait_for(lambda: running_store(out, 2), 180, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the driver and its workers
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert f"dynalign sweep {spec} --out {out}" in output
    stopped = manifest(out)["runs"]
    assert {r["status"] for r in stopped} <= {"interrupted", "completed", "pending"}
    assert any(r["status"] == "interrupted" for r in stopped)
    for run in stopped:  # consistent stores, whatever moment the workers were stopped at
        if run["status"] != "pending":
            assert_consistent(out / run["store"])
        else:
            assert not (out / run["store"]).exists()
    code, output = sweep(spec, out, "--quiet")
    assert code == 0, output
    assert all(r["status"] == "completed" for r in manifest(out)["runs"])


def test_one_driver_per_study_and_a_changed_spec_is_refused(tmp_path):
    spec = parse_spec("n_seeds = 1\n" + TINY + '[grid]\n"rule.name" = ["bp", "fa"]\n')
    out = tmp_path / "study"
    study = claim_study(spec, out)
    with pytest.raises(SweepError, match="another sweep is running"):
        claim_study(spec, out)
    study.lock.release()
    changed = parse_spec(
        "n_seeds = 1\n"
        + TINY.replace("batch_size = 50", "batch_size = 60")
        + '[grid]\n"rule.name" = ["bp", "fa"]\n'
    )
    with pytest.raises(SpecError, match="holds a different study"):
        claim_study(changed, out)
    more = parse_spec("n_seeds = 2\n" + TINY + '[grid]\n"rule.name" = ["bp", "fa"]\n')
    grown = claim_study(more, out)  # more seeds: the study grows, nothing is lost
    assert len(grown.manifest["runs"]) == 4 and grown.manifest["seeds"] == [0, 1]
    grown.lock.release()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(SweepError, match="holds no study"):
        claim_study(spec, foreign)
    assert (foreign / "notes.txt").read_text() == "keep"
    held = WriterLock(out)
    try:
        with pytest.raises(SweepError):
            claim_study(spec, out)
    finally:
        held.release()


def test_sweep_on_an_existing_scheduler_and_an_unreachable_one(tmp_path):
    import logging

    from distributed import LocalCluster

    spec = tmp_path / "spec.toml"
    spec.write_text("n_seeds = 1\n" + TINY.replace("[train]\n", "[train]\nepochs = 1\n"))
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        code, output = sweep(spec, tmp_path / "study", "--scheduler", cluster.scheduler_address)
    assert code == 0, output
    assert [r["status"] for r in manifest(tmp_path / "study")["runs"]] == ["completed"]
    code, output = sweep(spec, tmp_path / "other", "--scheduler", "tcp://127.0.0.1:9")
    assert code == 2, output
    error = output.strip().splitlines()[-1]
    assert error.startswith("Error: cannot reach the dask scheduler at tcp://127.0.0.1:9")
    assert "dask scheduler" in error
