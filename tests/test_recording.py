"""End-to-end recording: the store's schema, what the probes measure, and how runs end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

import dynalign
from dynalign.probes import probe_variables
from dynalign.reader import check_store, open_run
from dynalign.record import prepare, record
from dynalign.schema import EPOCH_VARIABLES, SCHEMA_VERSION, STEP_SCALARS
from dynalign.store import StoreError

PER_LAYER = [v.name for v in probe_variables()]


def test_store_schema(tmp_path, tiny_config):
    cfg = tiny_config()
    result = record(cfg, tmp_path / "run.zarr", progress=False)
    assert result.status == "completed"
    tree = open_run(tmp_path / "run.zarr")
    attrs = tree.attrs
    assert attrs["schema_version"] == SCHEMA_VERSION and attrs["status"] == "completed"
    assert json.loads(attrs["config"])["rule"]["name"] == "fa"
    assert attrs["dataset"]["name"] == "digits" and len(attrs["dataset"]["sha256"]) == 64
    assert attrs["layers"] == ["fc1", "fc2", "fc3"]
    steps = tree["steps"].ds
    n_steps = 2 * 6
    assert steps.sizes == {"step": n_steps, "layer": 3}
    assert list(steps.step.values) == list(range(1, n_steps + 1))
    for v in STEP_SCALARS:
        assert steps[v.name].dims == ("step",)
        assert steps[v.name].attrs["units"] == v.units and steps[v.name].attrs["long_name"]
    for name in PER_LAYER:
        assert steps[name].dims == ("step", "layer")
        assert "units" in steps[name].attrs and "long_name" in steps[name].attrs
    assert steps.update_angle.attrs["units"] == "degree"
    epochs = tree["epochs"].ds
    assert epochs.sizes == {"epoch": 2}
    for v in EPOCH_VARIABLES:
        assert v.name in epochs and "units" in epochs[v.name].attrs
    assert list(epochs.step.values) == [6, 12]
    snaps = tree["snapshots/fc2"].ds
    assert snaps.weight.dims == ("snapshot", "out", "in")
    assert list(snaps.snapshot_step.values) == [0, 5, 10, 12]
    assert snaps.weight.shape == (4, 32, 32) and snaps.feedback.shape == (4, 32, 32)
    # plain zarr reads the same arrays, with dimension names on every one
    group = zarr.open_group(str(tmp_path / "run.zarr"), mode="r")
    assert group["steps/update_angle"].metadata.dimension_names == ("step", "layer")
    np.testing.assert_array_equal(group["steps/loss"][:], steps.loss.values)
    # a finished run is never resumed: its checkpoints are gone, and nothing points at them
    assert "checkpoint" not in dict(group.groups()) and attrs["checkpoint"] is None
    assert check_store(tmp_path / "run.zarr", decode=True) == []


def test_probe_values_fa(tmp_path, tiny_config):
    cfg = tiny_config(**{"model.activation": "tanh"})
    data, model, _, rule = prepare(cfg)
    b_before = {
        n: m.feedback.clone()
        for n, m in model.named_modules()
        if hasattr(m, "feedback") and m.feedback is not None
    }
    record(cfg, tmp_path / "fa.zarr", progress=False)
    tree = open_run(tmp_path / "fa.zarr")
    steps = tree["steps"].ds
    # the output layer's update is the true gradient under FA, its error signal too
    np.testing.assert_allclose(steps.update_angle.sel(layer="fc3"), 0, atol=1e-3)
    np.testing.assert_allclose(steps.delta_angle.sel(layer="fc3"), 0, atol=1e-3)
    # hidden layers are not: FA starts near 90 degrees in the first layer
    assert 60 < float(steps.update_angle.sel(layer="fc1")[0]) < 120
    assert float(steps.feedback_angle.sel(layer="fc1")[0]) > 60
    # B never changes: every feedback snapshot equals the initial B, bitwise
    for name, b in b_before.items():
        fb = tree[f"snapshots/{name}"].ds.feedback.values
        for k in range(fb.shape[0]):
            assert np.array_equal(fb[k], b.numpy())
    # norms agree with the snapshots; no constraint, so nothing attempted
    w = tree["snapshots/fc2"].ds.weight.values[-1]
    assert float(steps.weight_norm.sel(layer="fc2")[-1]) == pytest.approx(
        np.linalg.norm(w), rel=1e-5
    )
    assert np.all(steps.attempted_flips.values == 0)
    assert np.all(steps.update_norm.values > 0)


def test_b_unchanged_after_training_in_memory(tiny_config):
    from dynalign.trainer import Trainer

    cfg = tiny_config(**{"train.weight_decay": 0.01})
    data, model, _, rule = prepare(cfg)
    before = {
        n: m.feedback.clone()
        for n, m in model.named_modules()
        if getattr(m, "feedback", None) is not None
    }
    w0 = model.fc1.weight.detach().clone()
    Trainer(cfg, data, model, rule, None, progress=False).run()
    assert before and all(
        torch.equal(before[n], m.feedback) for n, m in model.named_modules() if n in before
    )
    assert not torch.equal(w0, model.fc1.weight)


def test_bp_angles_are_zero(tmp_path, tiny_config):
    cfg = tiny_config(**{"rule.name": "bp"})
    record(cfg, tmp_path / "bp.zarr", progress=False)
    steps = open_run(tmp_path / "bp.zarr")["steps"].ds
    for name in ("update_angle", "delta_angle", "feedback_angle"):
        assert np.all(steps[name].values == 0), name
    assert "feedback" not in open_run(tmp_path / "bp.zarr")["snapshots/fc1"].ds


def test_probe_every_k_leaves_nan_between(tmp_path, tiny_config):
    cfg = tiny_config(**{"probes.every": 4})
    record(cfg, tmp_path / "k.zarr", progress=False)
    ua = open_run(tmp_path / "k.zarr")["steps"].ds.update_angle.sel(layer="fc1").values
    probed = np.flatnonzero(~np.isnan(ua)) + 1
    assert list(probed) == [1, 5, 9]


def test_same_seed_same_numbers(tmp_path, tiny_config):
    cfg = tiny_config()
    record(cfg, tmp_path / "a.zarr", progress=False)
    record(cfg, tmp_path / "b.zarr", progress=False)
    a, b = open_run(tmp_path / "a.zarr"), open_run(tmp_path / "b.zarr")
    for group in ("steps", "epochs", "snapshots/fc1"):
        for name in a[group].ds.data_vars:
            np.testing.assert_array_equal(a[group].ds[name].values, b[group].ds[name].values)
    other = tiny_config(**{"train.seed": 1})
    record(other, tmp_path / "c.zarr", progress=False)
    assert not np.array_equal(open_run(tmp_path / "c.zarr")["steps"].ds.loss, a["steps"].ds.loss)


def test_divergence_ends_cleanly(tmp_path, tiny_config):
    cfg = tiny_config(**{"train.lr": 1e6, "rule.name": "bp", "model.activation": "relu"})
    result = record(cfg, tmp_path / "d.zarr", progress=False)
    assert result.status == "diverged"
    tree = open_run(tmp_path / "d.zarr")
    assert tree.attrs["status"] == "diverged" and "lower train.lr" in tree.attrs["message"]
    loss = tree["steps"].ds.loss.values
    assert len(loss) >= 1 and not np.isfinite(loss[-1])
    assert tree["snapshots/fc1"].ds.sizes["snapshot"] >= 2  # initial and at divergence
    assert not (tmp_path / "d.zarr" / "checkpoint").exists()  # resume refuses it anyway


def test_a_failed_snapshot_write_fails_the_run_with_a_readable_store(
    tmp_path, tiny_config, monkeypatch
):
    """Snapshots are written on a background thread; its error reaches the caller."""
    import threading

    from dynalign import store

    flush = store._Appender.flush

    def disk_full_for_snapshots(self):
        if threading.current_thread().name.startswith("dynalign-writes"):
            raise OSError("No space left on device")
        flush(self)

    monkeypatch.setattr(store._Appender, "flush", disk_full_for_snapshots)
    out = tmp_path / "full.zarr"
    with pytest.raises(StoreError, match="snapshot.*No space left"):
        record(tiny_config(**{"probes.snapshot_every": 3}), out, progress=False)
    tree = open_run(out)
    assert tree.attrs["status"] == "failed" and "No space left" in tree.attrs["message"]
    assert tree["steps"].sizes["step"] >= 1  # the rows written before the failure are kept


def test_existing_store_is_not_touched(tmp_path, tiny_config):
    cfg = tiny_config()
    out = tmp_path / "x.zarr"
    record(cfg, out, progress=False)
    stamp = open_run(out).attrs["created"]
    with pytest.raises(StoreError, match="--overwrite"):
        record(cfg, out, progress=False)
    assert open_run(out).attrs["created"] == stamp
    record(cfg, out, overwrite=True, progress=False)


def test_open_run_rejects_foreign_paths(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_run(tmp_path / "nope.zarr")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a dynalign run"):
        open_run(tmp_path / "foreign.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError):
        open_run(tmp_path / "plain")


SIGTERM_SCRIPT = """
import sys
from dynalign.config import build_config
from dynalign.record import record
cfg = build_config(overrides={"model.depth": 2, "model.width": 32, "train.epochs": 1000,
                              "data.n_train": 300, "data.n_val": 100, "train.batch_size": 50,
                              "probes.snapshot_every": 50})
print("starting", flush=True)
record(cfg, sys.argv[1], progress=False)
"""


def test_sigterm_leaves_interrupted_valid_store(tmp_path):
    out = tmp_path / "killed.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, str(out)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "starting"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until more than one chunk of steps is committed
        if (out / "zarr.json").exists():
            try:
                if zarr.open_group(str(out), mode="r").attrs["committed"]["steps"] >= 1024:
                    break
            except Exception:
                pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    tree = dynalign.open_run(out)
    assert tree.attrs["status"] == "interrupted"
    steps = tree["steps"].ds
    n = steps.sizes["step"]
    assert n >= 1024
    assert list(steps.step.values) == list(range(1, n + 1))
    assert np.all(np.isfinite(steps.loss.values))
    assert tree["epochs"].ds.sizes["epoch"] >= 1


def test_a_flush_that_fails_half_way_keeps_its_rows(tmp_path):
    """A write error after some arrays of a group were written (a full disk) must not lose
    the rows: the next flush writes every array again from intact buffers."""
    from dynalign.store import RunWriter

    writer = RunWriter(tmp_path / "f.zarr", {}, {"fc1": (2, 3)}, {}, (), probe_variables())
    names = list(writer.steps.arrays)
    last = names[-1]  # written after the others: they succeed, this one fails
    put, failed = writer.store.put, []

    def fails_once(key, data):
        """The store's file writes, of which the first of ``last``'s chunks fails."""
        if key.startswith(f"steps/{last}/c/") and not failed:
            failed.append(key)
            raise OSError(28, "No space left on device")
        put(key, data)

    writer.store.put = fails_once
    for step in (1, 2, 3):
        writer.append_step({"step": step, "epoch": 1, "loss": 0.5 * step})
    with pytest.raises(OSError):
        writer.commit()
    writer.commit()
    writer.close("completed")
    steps = open_run(tmp_path / "f.zarr")["steps"].ds
    assert list(steps.step.values) == [1, 2, 3] and list(steps.epoch.values) == [1, 1, 1]
    np.testing.assert_array_equal(steps.loss.values, [0.5, 1.0, 1.5])


def test_a_due_commit_is_published_in_the_background_and_its_failure_raised_after(tmp_path):
    """``commit_if_due`` writes the rows at once and publishes their lengths (fsyncs and the
    root metadata) on the writer's thread: readers see them once it is done. Where that
    fails (a full disk), the committed lengths stay the last published ones, the next check
    raises the error, and a commit after it publishes every row."""
    from dynalign.store import RunWriter

    path = tmp_path / "c.zarr"
    writer = RunWriter(path, {}, {"fc1": (2, 3)}, {}, (), probe_variables(), commit_seconds=0)
    for step in (1, 2):
        writer.append_step({"step": step, "epoch": 1, "loss": 1.0})
    writer.commit_if_due()
    assert writer._publishing is not None  # handed to the writer's thread
    writer.wait_for_writes()
    assert open_run(path)["steps"].ds.sizes["step"] == 2

    sync, failures = writer.store.sync, []

    def fails_once():
        if not failures:
            failures.append(1)
            raise OSError(28, "No space left on device")
        sync()

    writer.store.sync = fails_once
    writer.append_step({"step": 3, "epoch": 1, "loss": 1.0})
    writer.commit_if_due()
    writer._publishing.exception()  # let it end (and fail)
    assert zarr.open_group(str(path), mode="r").attrs["committed"]["steps"] == 2
    with pytest.raises(OSError, match="No space"):
        writer.commit_if_due()
    writer.commit()
    assert open_run(path)["steps"].ds.sizes["step"] == 3
    writer.close("completed")


def test_appended_arrays_grow_a_chunk_at_a_time_and_close_trims_them(tmp_path):
    """A flush grows the arrays to whole chunks (no metadata rewritten while rows fill a
    chunk); readers stop at the committed length meanwhile, and ``close`` trims to it."""
    from dynalign.store import RunWriter

    path = tmp_path / "g.zarr"
    writer = RunWriter(path, {}, {"fc1": (2, 3)}, {}, (), probe_variables(), chunk=8)
    for step in range(1, 4):
        writer.append_step({"step": step, "epoch": 1, "loss": 1.0})
    writer.commit()
    raw = zarr.open_group(str(path), mode="r")
    assert raw["steps/loss"].shape == (8,) and raw.attrs["committed"]["steps"] == 3
    assert open_run(path)["steps"].ds.sizes["step"] == 3
    before = (path / "steps" / "loss" / "zarr.json").read_bytes()
    for step in range(4, 7):
        writer.append_step({"step": step, "epoch": 1, "loss": 1.0})
    writer.commit()  # within the first chunk: the metadata stays as it was
    assert (path / "steps" / "loss" / "zarr.json").read_bytes() == before
    for step in range(7, 11):
        writer.append_step({"step": step, "epoch": 1, "loss": 1.0})
    writer.commit()
    assert zarr.open_group(str(path), mode="r")["steps/loss"].shape == (16,)
    writer.close("completed")
    raw = zarr.open_group(str(path), mode="r")
    assert raw["steps/loss"].shape == (10,) and raw["steps/weight_norm"].shape == (10, 1)
    assert list(open_run(path)["steps"].ds.step.values) == list(range(1, 11))


def test_a_flush_writes_whole_chunks_without_reading_them_back(tmp_path, monkeypatch):
    """Rows that fill part of a chunk are written as that whole chunk from the buffer (zarr
    would otherwise read the chunk's file back to merge them: a third of a small flush's
    time); a writer reopened inside a chunk keeps that chunk's earlier rows."""
    from dynalign.durable import DurableStore
    from dynalign.store import RunWriter

    path = tmp_path / "w.zarr"
    writer = RunWriter(path, {}, {"fc1": (2, 3)}, {}, (), probe_variables(), chunk=8)
    reads = []
    read = DurableStore.get

    async def counted(self, key, *args, **kwargs):
        if "/c/" in key:  # a chunk file, not metadata
            reads.append(key)
        return await read(self, key, *args, **kwargs)

    monkeypatch.setattr(DurableStore, "get", counted)
    for step in range(1, 12):  # flushes at 3, 6 and 11 rows: inside chunks and across one
        writer.append_step({"step": step, "epoch": 1, "loss": 0.25 * step})
        if step in (3, 6):
            writer.commit()
    committed = writer.commit()
    assert reads == [] and committed["steps"] == 11
    monkeypatch.setattr(DurableStore, "get", read)
    writer.close("interrupted")

    resumed = RunWriter.reopen(path, {**committed, "steps": 10})  # row 11 dropped, 9-10 kept
    for step in (11, 12):
        resumed.append_step({"step": step, "epoch": 2, "loss": 1.0})
    resumed.close("completed")
    steps = open_run(path)["steps"].ds
    assert list(steps.step.values) == list(range(1, 13))
    np.testing.assert_array_equal(steps.loss.values, [0.25 * s for s in range(1, 11)] + [1, 1])
    assert list(steps.epoch.values) == [1] * 10 + [2, 2]


def test_close_trims_the_arrays_before_the_final_commit(tmp_path, monkeypatch):
    """A kill right after a run's last commit must leave it in its final shape: the arrays
    are cut to their rows while the store still says running, then it says completed."""
    from dynalign import store

    path = tmp_path / "t.zarr"
    writer = store.RunWriter(path, {}, {"fc1": (2, 3)}, {}, (), probe_variables(), chunk=8)
    for step in (1, 2, 3):
        writer.append_step({"step": step, "epoch": 1, "loss": 1.0})
    seen = []
    trim = store._Appender.trim

    def watched(self):
        seen.append(zarr.open_group(str(path), mode="r").attrs["status"])
        trim(self)

    monkeypatch.setattr(store._Appender, "trim", watched)
    writer.close("completed")
    assert seen and set(seen) == {"running"}
    raw = zarr.open_group(str(path), mode="r")
    assert raw.attrs["status"] == "completed" and raw.attrs["committed"]["steps"] == 3
    assert raw["steps/loss"].shape == (3,)


def test_a_fixed_feedback_is_written_with_the_first_snapshot_and_once(tmp_path):
    """A B the rule never changes is one row (schema 4), written with the first snapshot: a
    store read before it shows no B and checks clean, a writer reopened before any snapshot
    was committed writes it with its own first one, and later snapshots leave it alone."""
    from dynalign.reader import check_store
    from dynalign.store import RunWriter

    path = tmp_path / "fixed.zarr"
    shapes = {"fc1": (2, 3)}
    writer = RunWriter(path, {}, shapes, shapes, (), probe_variables(), feedback_fixed=True)
    w, b = np.ones((2, 3), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)
    writer.commit()
    assert open_run(path)["snapshots/fc1"].ds.feedback.shape == (0, 2, 3)
    assert check_store(path) == [] and not (path / "snapshots/fc1/feedback/c").exists()
    assert writer.takes_feedback("fc1")
    writer.snapshot(0, {"fc1": w}, {"fc1": b})  # not committed: as if killed here
    writer.wait_for_writes()
    writer.lock.release()

    writer = RunWriter.reopen(path, {"steps": 0, "epochs": 0, "snapshots": 0, "reconstructions": 0})
    assert writer.takes_feedback("fc1")
    writer.snapshot(0, {"fc1": w}, {"fc1": b + 1})
    assert not writer.takes_feedback("fc1")
    writer.snapshot(5, {"fc1": 2 * w}, {"fc1": b - 7})  # ignored: B is fixed
    writer.close("completed")
    ds = open_run(path)["snapshots/fc1"].ds
    assert list(ds.snapshot_step.values) == [0, 5]
    np.testing.assert_array_equal(ds.feedback.values, [b + 1, b + 1])
    np.testing.assert_array_equal(ds.weight.values, [w, 2 * w])
    assert zarr.open_group(str(path), mode="r")["snapshots/fc1/feedback"].shape == (1, 2, 3)
    assert check_store(path, decode=True) == []


def test_snapshot_arrays_grow_ahead_of_their_rows_and_are_trimmed_at_close(tmp_path):
    """A snapshot array (a row a chunk) doubles its length when full instead of growing by
    a row per snapshot: its metadata is written a few times, not with every snapshot. A store
    read before ``close`` shows the committed rows alone; ``close`` cuts the rest."""
    from dynalign.reader import check_store
    from dynalign.store import RunWriter

    path = tmp_path / "grow.zarr"
    writer = RunWriter(path, {}, {"fc1": (2, 3)}, {}, (), probe_variables())
    metadata = "snapshots/fc1/weight/zarr.json"
    writes = []
    set_ = writer.store.set

    async def counted(key, value):
        writes.append(key)
        await set_(key, value)

    writer.store.set = counted
    for i in range(20):
        writer.snapshot(i, {"fc1": np.full((2, 3), i, np.float32)})
    writer.wait_for_writes()
    writer.commit()
    assert writes.count(metadata) == 6  # lengths 1, 2, 4, 8, 16, 32
    assert zarr.open_group(str(path), mode="r")["snapshots/fc1/weight"].shape == (32, 2, 3)
    assert open_run(path)["snapshots/fc1"].ds.sizes["snapshot"] == 20
    assert check_store(path, decode=True) == []
    writer.close("completed")
    ds = open_run(path)["snapshots/fc1"].ds
    assert list(ds.snapshot_step.values) == list(range(20))
    np.testing.assert_array_equal(ds.weight.values[:, 0, 0], np.arange(20, dtype=np.float32))
    assert zarr.open_group(str(path), mode="r")["snapshots/fc1/weight"].shape == (20, 2, 3)
