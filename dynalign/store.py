"""The run store: a zarr v3 group written while the run goes (reading it: ``dynalign.reader``).

``RunWriter`` creates every array up front (resizable along time), buffers rows in fixed-size
numpy blocks and appends them, so memory stays flat however long the run is. Nothing a reader
sees is half-written: data is written first, and only then the *committed* lengths in the root
attributes, in one atomic metadata write (zarr replaces files by rename). A reader, live or
after a crash, takes every array up to its committed length, so arrays that are resized one
after another never disagree. Commits happen at every epoch's end and at least every
``commit_seconds`` of training. Weight snapshots and checkpoints, the large writes, go to disk
on a background thread, one after another in the order they were taken: a snapshot counts as
committed only once every layer's copy is on disk, and a checkpoint is committed (with the rows
it belongs to) only once its arrays are on disk. A B that the rule never changes is written once,
with the first snapshot (``schema.FIXED``). Chunks are written whole by ``dynalign.chunk_write``
(the files zarr writes, without the Python of its asyncio pipeline); arrays grow ahead of their
rows, and zarr itself writes only the metadata.

One writer per store: the writer holds an OS lock on the store's directory for its whole life
(``dynalign.writer_lock``), and ``--overwrite`` clears only a dynalign store that no live writer
holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from . import schema
from .chunk_write import write_chunk
from .durable import DurableStore
from .schema import SCHEMA_VERSION, Variable
from .writer_lock import LockHeld, WriterLock, describe_writer, writer_identity

STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
#: statuses a run ends in for good: `--resume` refuses them
FINISHED = ("completed", "diverged")
#: groups whose arrays grow along their first dimension, and the key of their committed length
APPENDED = {
    "steps": "step",
    "epochs": "epoch",
    "snapshots": "snapshot",
    "reconstructions": "snapshot",
}
#: what a writer may remove from a store it replaces: its own groups and the root metadata,
#: last, so that a store half-cleared by a kill is still a run store that --overwrite clears
OWN_ENTRIES = (*APPENDED, "units", "checkpoint", "zarr.json")
#: chunk files are written even where every value is the fill value, so that a missing chunk
#: file always means damage (see ``dynalign.reader.check_store``)
ARRAY_CONFIG = {"write_empty_chunks": True}


class StoreError(ValueError):
    """A path that is not (or no longer) a readable dynalign run store."""


def _fill(dtype: str) -> Any:
    return np.nan if dtype.startswith("float") else 0


class _Appender:
    """A buffered append to arrays sharing a leading dimension; ``n`` rows are on disk.

    The buffers hold the chunk the next rows fall in, from its first row: a flush writes that
    whole chunk (rows not yet filled hold the fill value), so zarr replaces the chunk's file
    without reading it back first, a third of a small flush's time."""

    def __init__(self, arrays: dict[str, zarr.Array], n: int = 0):
        self.arrays, self.n = arrays, n
        first = next(iter(arrays.values()))
        self.chunk = first.chunks[0]
        self.base = n - n % self.chunk  # the row of the buffers' first row
        self.used = n - self.base  # buffer rows holding data, on disk or not
        self.buffers = {
            name: np.full((self.chunk, *a.shape[1:]), _fill(str(a.dtype)), dtype=a.dtype)
            for name, a in arrays.items()
        }
        if self.used:  # a reopened run's part-filled chunk: its rows are written again
            for name, a in arrays.items():
                self.buffers[name][: self.used] = a[self.base : n]

    @classmethod
    def create(
        cls, group: zarr.Group, dim: str, columns: dict[str, tuple], chunk: int, compress=True
    ) -> _Appender:
        arrays = {}
        for name, (trailing, dtype, dims, attrs) in columns.items():
            arrays[name] = group.create_array(
                name,
                shape=(0, *trailing),
                chunks=(chunk, *trailing),
                dtype=dtype,
                fill_value=_fill(dtype),
                dimension_names=(dim, *dims),
                attributes=attrs,
                compressors="auto" if compress else None,
                config=ARRAY_CONFIG,
            )
        return cls(arrays)

    @classmethod
    def reopen(cls, group: zarr.Group, dim: str, n: int) -> _Appender:
        """The appender of an existing group, continuing after its ``n`` committed rows."""
        arrays = {
            name: a.with_config(ARRAY_CONFIG)
            for name, a in group.arrays()
            if (a.metadata.dimension_names or (None,))[0] == dim and not a.attrs.get(schema.FIXED)
        }
        for a in arrays.values():  # rows past the commit are not part of the run any more
            if a.shape[0] != n:
                a.resize((n, *a.shape[1:]))
        return cls(arrays, n)

    def row(self) -> int:
        """Index of the buffer row to fill next (flushes a full buffer first)."""
        if self.used == self.chunk:
            self.flush()
        self.used += 1
        return self.used - 1

    def flush(self) -> None:
        end = self.base + self.used
        if end == self.n:
            return
        # every array first, the buffers moved on only after: a flush that fails half-way (a
        # full disk) keeps its rows, and the next flush writes them all again
        short = [a for a in self.arrays.values() if a.shape[0] < end]
        if short:  # even with nothing to run, a call into zarr's event loop waits for its thread
            write_all(_grow(a.async_array, end) for a in short)
        for name, array in self.arrays.items():
            write_chunk(
                array, (self.base // self.chunk, *(0,) * (array.ndim - 1)), self.buffers[name]
            )
        self.n = end
        if self.used == self.chunk:
            for buf in self.buffers.values():
                buf.fill(_fill(str(buf.dtype)))
            self.base, self.used = end, 0

    def trim(self) -> None:
        """Cut the arrays, grown ahead of their rows (``_grow``), to the ``n`` rows written."""
        write_all(
            a.async_array.resize((self.n, *a.shape[1:]))
            for a in self.arrays.values()
            if a.shape[0] != self.n
        )


async def _grow(array: zarr.AsyncArray, end: int) -> None:
    """``array`` grown to hold ``end`` rows: to a whole number of chunks, and at least to twice
    its length, so that few flushes rewrite its metadata (a snapshot array, a row a chunk,
    would otherwise rewrite it with every snapshot: zarr's Python, holding the GIL on the
    writer's thread, slows the training step running beside it). Readers stop at the committed
    length, and ``close`` trims the rest. Each flush writes the chunk of rows from a chunk's
    first row, whole."""
    size = array.chunks[0]
    rows = max(-(-end // size) * size, 2 * array.shape[0])
    await array.resize((rows, *array.shape[1:]))


def write_all(writes: Iterable[Coroutine]) -> None:
    """Run zarr writes (coroutines) at once, so that their files' creation, writing and
    renaming overlap on zarr's threads instead of each waiting for the last; every write ends
    before the first error (a full disk, say) is raised, so none is left running."""
    errors = [e for e in sync(_gather(list(writes))) if e is not None]
    if errors:
        raise errors[0]


async def _gather(writes: list[Coroutine]) -> list:
    return await asyncio.gather(*writes, return_exceptions=True)


def _fixed_array(group: zarr.Group, name: str, column: tuple) -> zarr.Array:
    """A snapshot array of one row that stands for every snapshot (``schema.FIXED``), written
    with the first snapshot (readers show none of it before a snapshot is committed)."""
    trailing, dtype, dims, attrs = column
    return group.create_array(
        name,
        shape=(1, *trailing),
        chunks=(1, *trailing),
        dtype=dtype,
        fill_value=_fill(dtype),
        dimension_names=("snapshot", *dims),
        attributes={**attrs, schema.FIXED: True},
        compressors=None,
        config=ARRAY_CONFIG,
    )


def _column(dims: tuple[str, ...], trailing: tuple, v: Variable, dtype: str | None = None):
    return (trailing, dtype or v.dtype, dims, {"units": v.units, "long_name": v.long_name})


def array_paths(group: zarr.Group):
    """Every array below ``group``: the list a reader checks a store against."""
    for _, array in group.arrays():
        yield array.path
    for _, child in group.groups():
        yield from array_paths(child)


def claim_store(path: Path, overwrite: bool) -> WriterLock:
    """Make ``path`` an empty directory this process alone writes, and hold its writer lock.

    An existing path is replaced only with ``overwrite``, only if it is a dynalign run store,
    and only if no live writer holds it; then only what a writer creates is removed.
    """
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise StoreError(f"{path} already exists; choose another --out or pass --overwrite")
        # an empty directory holds nothing to lose: a run killed before it wrote its metadata
        empty = path.is_dir() and not path.is_symlink() and not any(path.iterdir())
        fix = "--overwrite replaces only run stores: choose another --out"
        attrs = {} if empty else dynalign_attrs(path, fix)  # only a run store is replaced
        _refuse_special_directory(path)
        try:
            lock = WriterLock(path)
        except LockHeld:
            raise StoreError(
                f"{path} is being written by {describe_writer(attrs.get('writer'))}; "
                "wait for that run to end (or stop it), or choose another --out"
            ) from None
        _remove_own_entries(path)
        return lock
    try:
        path.mkdir()
    except FileExistsError:
        raise StoreError(
            f"{path} was created by another process just now; choose another --out"
        ) from None
    except OSError as err:
        raise StoreError(
            f"cannot create the store {path}: {err.strerror}; choose a writable --out"
        ) from None
    try:
        return WriterLock(path)
    except LockHeld:
        raise StoreError(f"{path} was claimed by another writer; choose another --out") from None


def _remove_own_entries(path: Path) -> None:
    for name in OWN_ENTRIES:
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


#: the name zarr gives a file while writing it, before renaming it into place
PARTIAL_FILE = re.compile(r"\.[0-9a-f]{32}\.partial")


def _remove_partial_files(path: Path) -> None:
    """Remove what writes cut short by a kill left behind: zarr's half-written temporary
    files (readers ignore them, but warn of them each time the group is listed). Only a
    writer holding the store's lock calls this, so none of them is still being written."""
    for entry in path.rglob("*.partial"):
        if PARTIAL_FILE.search(entry.name) and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def dynalign_attrs(
    path: Path, fix: str = "give the path of a store written by `dynalign record`"
) -> dict[str, Any]:
    """The root attributes of the dynalign store at ``path`` (StoreError, ending in ``fix``,
    for anything else)."""
    if not path.is_dir():
        raise StoreError(f"{path} is not a directory, so not a dynalign run store; {fix}")
    meta = path / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        attrs = None
    if not isinstance(attrs, dict) or "schema_version" not in attrs:
        raise StoreError(
            f"{path} is not a dynalign run store (no zarr metadata with schema_version); {fix}"
        )
    return attrs


def _refuse_special_directory(path: Path) -> None:
    where = path.resolve()
    cwd = Path.cwd().resolve()
    special = {Path(where.anchor), Path.home().resolve()}
    if where in special or where == cwd or where in cwd.parents:
        raise StoreError(
            f"{path} is the working directory, a parent of it, the home directory or the root; "
            "--overwrite never clears it: choose another --out"
        )


class RunWriter:
    """Writes one run. Create it (or ``reopen`` it to resume), append rows, commit, ``close``."""

    def __init__(
        self,
        path: str | Path,
        attrs: dict[str, Any],
        layers: dict[str, tuple[int, ...]],
        feedback_shapes: dict[str, tuple[int, ...]],
        extra_step_terms: tuple[str, ...] = (),
        step_variables: tuple[Variable, ...] = (),
        chunk: int = 512,
        image_shape: tuple[int, ...] | None = None,
        n_probe: int = 0,
        snapshot_dtype: str = "float32",
        feedback_fixed: bool = False,
        overwrite: bool = False,
        commit_seconds: float = 10.0,
        _reopen: tuple[WriterLock, zarr.Group, dict[str, int]] | None = None,
    ):
        self.path = Path(path)
        self.commit_seconds = commit_seconds
        self._io: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._pending_step = -1  # the step of the snapshot ``_pending`` writes
        self._checkpoint: Future | None = None  # a checkpoint being written and committed
        self._publishing: Future | None = None  # a commit's lengths being made durable
        self._snapshots_before = 0  # snapshot rows on disk before it
        #: a checkpoint's zarr arrays by "slot/name", opened once, those of them holding a
        #: value that never changes during the run, and the host copies being written (see
        #: ``dynalign.checkpoint``)
        self.checkpoint_arrays: dict[str, zarr.Array] = {}
        self.checkpoint_fixed: set[str] = set()
        self.checkpoint_copies: dict[str, np.ndarray] = {}  # host copies, reused
        self._last_commit = time.monotonic()
        if _reopen is not None:
            self.lock, self.root, committed = _reopen
            self.store = self.root.store
            self._open_existing(committed)
            return
        self.lock = claim_store(self.path, overwrite)
        try:
            self.store = DurableStore(self.path)
            self.root = zarr.create_group(
                self.store,
                zarr_format=3,
                attributes={
                    "schema_version": SCHEMA_VERSION,
                    "status": "running",
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "writer": writer_identity(),
                    "layers": list(layers),
                    "committed": dict.fromkeys(APPENDED, 0),
                    **attrs,
                },
            )
            self._create(
                layers,
                feedback_shapes,
                extra_step_terms,
                step_variables,
                chunk,
                image_shape,
                n_probe,
                snapshot_dtype,
                feedback_fixed,
            )
            self.manifest = sorted(array_paths(self.root))
        except OSError as err:
            # a half-made store is neither readable nor resumable: leave nothing behind
            with contextlib.suppress(OSError):
                _remove_own_entries(self.path)
                self.path.rmdir()
            self.lock.release()
            raise StoreError(
                f"cannot write the store {self.path}: {err.strerror or err}; "
                "free disk space or choose another --out"
            ) from None

    def _create(
        self,
        layers,
        feedback_shapes,
        extra_step_terms,
        step_variables,
        chunk,
        image_shape,
        n_probe,
        snapshot_dtype,
        feedback_fixed,
    ) -> None:
        self.layers = list(layers)
        n_layers = len(self.layers)
        steps = self.root.create_group("steps")
        names = steps.create_array(
            "layer",
            shape=(n_layers,),
            dtype=str,
            dimension_names=("layer",),
            attributes={"long_name": schema.LAYER.long_name, "units": schema.LAYER.units},
            config=ARRAY_CONFIG,
        )
        names[:] = np.array(self.layers, dtype=object)
        columns = {}
        scalars = (schema.STEP, *schema.STEP_SCALARS, *map(schema.loss_term, extra_step_terms))
        for v in (*scalars, *step_variables):
            dims, trailing = (("layer",), (n_layers,)) if v.per_layer else ((), ())
            columns[v.name] = _column(dims, trailing, v)
        self.steps = _Appender.create(steps, "step", columns, chunk)

        epochs = self.root.create_group("epochs")
        columns = {v.name: _column((), (), v) for v in (schema.EPOCH, *schema.EPOCH_VARIABLES)}
        self.epochs = _Appender.create(epochs, "epoch", columns, 64)

        self.snapshots: dict[str, _Appender] = {}
        self._fixed = {}
        snaps = self.root.create_group("snapshots")
        for name, shape in layers.items():
            cols = {
                "snapshot_step": _column((), (), schema.SNAPSHOT_STEP),
                "weight": _column(schema.weight_dims(shape), shape, schema.WEIGHT, snapshot_dtype),
            }
            group = snaps.create_group(name)
            if name in feedback_shapes:
                fb = tuple(feedback_shapes[name])
                column = _column(
                    schema.feedback_dims(fb, shape), fb, schema.FEEDBACK, snapshot_dtype
                )
                if feedback_fixed:
                    self._fixed[name] = _fixed_array(group, "feedback", column)
                else:
                    cols["feedback"] = column
            # trained weights are near-random floats: compressing them costs time, saves ~5%
            self.snapshots[name] = _Appender.create(group, "snapshot", cols, 1, compress=False)
        self._snapshots_done = 0

        self.reconstructions = None
        if image_shape is not None:
            rec = self.root.create_group("reconstructions")
            rec.attrs["image_shape"] = list(image_shape)
            n_pix = int(np.prod(image_shape))
            cols = {
                "snapshot_step": _column((), (), schema.RECONSTRUCTION_STEP),
                "reconstruction": _column(
                    ("probe", "pixel"), (n_probe, n_pix), schema.RECONSTRUCTION
                ),
            }
            self.reconstructions = _Appender.create(rec, "snapshot", cols, 1)

    @classmethod
    def reopen(cls, path: str | Path, committed: dict[str, int], commit_seconds: float = 10.0):
        """Continue writing an existing store after the rows ``committed`` names (a checkpoint's
        lengths); rows past them are dropped. Takes the writer lock (StoreError if held)."""
        path = Path(path)
        attrs = dynalign_attrs(path)
        try:
            lock = WriterLock(path)
        except LockHeld:
            raise StoreError(
                f"{path} is being written by {describe_writer(attrs.get('writer'))}; "
                "it is still running: wait for it to end before resuming it"
            ) from None
        root = zarr.open_group(DurableStore(path), mode="r+")
        return cls(path, {}, {}, {}, commit_seconds=commit_seconds, _reopen=(lock, root, committed))

    def _open_existing(self, committed: dict[str, int]) -> None:
        _remove_partial_files(self.path)
        # first the committed lengths shrink, then the arrays: readers never see a short array
        self.root.update_attributes(
            {
                "committed": committed,
                "status": "running",
                "message": "",
                "writer": writer_identity(),
            }
        )
        self.layers = list(self.root.attrs["layers"])
        self.manifest = list(self.root.attrs.get("arrays", []))
        self.steps = _Appender.reopen(self.root["steps"], "step", committed["steps"])
        self.epochs = _Appender.reopen(self.root["epochs"], "epoch", committed["epochs"])
        self.snapshots = {
            name: _Appender.reopen(
                self.root[f"snapshots/{name}"], "snapshot", committed["snapshots"]
            )
            for name in self.layers
        }
        self._snapshots_done = committed["snapshots"]
        self._fixed = {}  # a fixed B not written yet: no snapshot committed
        for name in self.layers if not committed["snapshots"] else ():
            group = self.root[f"snapshots/{name}"]
            if "feedback" in group and group["feedback"].attrs.get(schema.FIXED):
                self._fixed[name] = group["feedback"].with_config(ARRAY_CONFIG)
        self.reconstructions = None
        if "reconstructions" in self.root:
            self.reconstructions = _Appender.reopen(
                self.root["reconstructions"], "snapshot", committed["reconstructions"]
            )

    # -- rows ---------------------------------------------------------------------------------
    def append_step(self, values: dict[str, Any]) -> None:
        i = self.steps.row()
        for name, value in values.items():
            self.steps.buffers[name][i] = value

    def append_epoch(self, values: dict[str, Any]) -> None:
        i = self.epochs.row()
        for name, value in values.items():
            self.epochs.buffers[name][i] = value

    def snapshot(
        self,
        step: int,
        weights: dict[str, np.ndarray],
        feedback: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Copy W (and B) now; write them on the background thread (see ``close``)."""
        self._finish_snapshot()  # its buffers are about to be refilled
        self._pending_step, self._snapshots_before = step, self._snapshots_done
        for name, app in self.snapshots.items():
            i = app.row()
            app.buffers["snapshot_step"][i] = step
            app.buffers["weight"][i] = weights[name]
            if feedback and "feedback" in app.buffers:
                app.buffers["feedback"][i] = feedback[name]
        # a fixed B goes with the first snapshot; should that fail, the run fails with it, and
        # a resumed run (no snapshot committed) writes it with its own first one
        fixed = {n: (a, np.array(feedback[n], dtype=a.dtype)) for n, a in self._fixed.items()}
        self._fixed = {}
        self._pending = self._background().submit(self._flush_snapshots, fixed)

    def takes_feedback(self, layer: str) -> bool:
        """Whether the next snapshot of ``layer`` stores B: every one, or the first where B is
        fixed (stored once)."""
        return "feedback" in self.snapshots[layer].buffers or layer in self._fixed

    def _background(self) -> ThreadPoolExecutor:
        """The one thread that writes snapshots and checkpoints, in the order submitted."""
        if self._io is None:
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynalign-writes")
        return self._io

    def _flush_snapshots(self, fixed: dict[str, tuple[zarr.Array, np.ndarray]]) -> None:
        for array, value in fixed.values():
            write_chunk(array, (0,) * array.ndim, value[None])
        for app in self.snapshots.values():
            app.flush()
        self._snapshots_done = next(iter(self.snapshots.values())).n if self.snapshots else 0

    def _finish_snapshot(self) -> None:
        """Wait for the snapshot being written; its error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except Exception as err:
            raise StoreError(
                f"writing a weight snapshot to {self.path} failed ({type(err).__name__}: {err})"
            ) from err

    def snapshot_in_flight(self, step: int | None) -> bool:
        """Whether the snapshot of ``step`` is still being written. A checkpoint at ``step``
        need not wait for it: it commits the rows before it, and a resumed run takes it again
        from the same state. A snapshot of an earlier step (any, with None) is waited for."""
        pending = self._pending
        if pending is not None and self._pending_step == step and not pending.done():
            return True
        self._finish_snapshot()
        return False

    def write_checkpoint(
        self,
        writes: list[Callable[[], None]],
        lengths: dict[str, int],
        info: dict[str, Any],
        done: Callable[[], None],
    ) -> None:
        """On the background thread, after any snapshot before it: call ``writes`` (each
        writes one of a checkpoint's arrays, from copies), then commit ``info`` with the rows
        ``lengths`` counts and call ``done()``. Training goes on meanwhile; a kill before the
        commit keeps the previous checkpoint. Call ``finish_checkpoint`` before the next one."""

        def write_and_commit() -> None:
            for write in writes:
                write()
            done()
            self._publish(lengths, checkpoint=info)

        self._checkpoint = self._background().submit(write_and_commit)

    def finish_checkpoint(self) -> None:
        """Wait for the checkpoint being written; its error (a full disk: OSError) is raised
        here, once."""
        pending, self._checkpoint = self._checkpoint, None
        if pending is not None:
            pending.result()

    def _finish_publishing(self) -> None:
        """Wait for a commit being published in the background (``commit_if_due``); its
        error (a full disk: OSError) is raised here, once."""
        pending, self._publishing = self._publishing, None
        if pending is not None:
            pending.result()

    def wait_for_writes(self) -> None:
        """Wait for the snapshot, the checkpoint and the commit being written in the
        background; a failed snapshot is raised here as a StoreError, a failed checkpoint's or
        commit's OSError as it is."""
        self._finish_snapshot()
        self.finish_checkpoint()
        self._finish_publishing()

    def reconstruction(self, step: int, values: np.ndarray) -> None:
        app = self.reconstructions
        i = app.row()
        app.buffers["snapshot_step"][i] = step
        app.buffers["reconstruction"][i] = values
        app.flush()

    def write_static(
        self,
        group: str,
        name: str,
        values: np.ndarray,
        dims: tuple[str, ...],
        variable: Variable,
    ) -> None:
        """A fixed array written once (probe inputs, constraint signs, unit signs)."""
        g = self.root.require_group(group)
        arr = g.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            dimension_names=dims,
            attributes={"units": variable.units, "long_name": variable.long_name},
            config=ARRAY_CONFIG,
        )
        arr[...] = values
        self.manifest.append(arr.path)

    # -- commits ------------------------------------------------------------------------------
    def _appenders(self) -> list[_Appender]:
        extra = [self.reconstructions] if self.reconstructions is not None else []
        return [self.steps, self.epochs, *self.snapshots.values(), *extra]

    def committed_lengths(self, without_snapshot_in_flight: bool = False) -> dict[str, int]:
        """Rows on disk in every appended group (after flushing the buffered ones); with
        ``without_snapshot_in_flight``, the snapshot rows before the one being written (see
        ``snapshot_in_flight``), even if it has landed since."""
        self.steps.flush()
        self.epochs.flush()
        lengths = {
            "steps": self.steps.n,
            "epochs": self.epochs.n,
            "snapshots": (
                self._snapshots_before if without_snapshot_in_flight else self._snapshots_done
            ),
            "reconstructions": self.reconstructions.n if self.reconstructions else 0,
        }
        return lengths

    def commit(self, **attrs: Any) -> dict[str, int]:
        """Make every row written so far visible to readers (and ``attrs`` with it).

        ``update_attributes`` writes the root metadata once; ``attrs.update`` would write it
        once per key, so a kill (or full disk) between could keep half a commit.
        """
        self.finish_checkpoint()  # they write the same attributes
        self._finish_publishing()
        lengths = self.committed_lengths()
        self._publish(lengths, **attrs)
        return lengths

    def _publish(self, lengths: dict[str, int], **attrs: Any) -> None:
        self.store.sync()  # the rows reach the disk before the lengths that point at them
        self.root.update_attributes({"committed": lengths, "arrays": self.manifest, **attrs})
        self.store.sync()
        self._last_commit = time.monotonic()

    def commit_if_due(self, seconds: float | None = None) -> None:
        """A commit once ``seconds`` (default ``commit_seconds``) have passed since the last:
        bounds what a hard kill can lose, and how often every written file is fsynced. The rows
        are written now; their fsyncs and the committed lengths (half a commit's time, waiting
        for the disk) follow on the background thread, after any snapshot or checkpoint taken
        before, so readers see them a moment later. A checkpoint or commit that failed in the
        background raises its error here, a step later."""
        if self._checkpoint is not None and self._checkpoint.done():
            self.finish_checkpoint()
        if self._publishing is not None and self._publishing.done():
            self._finish_publishing()
        wait = self.commit_seconds if seconds is None else seconds
        if self._publishing is None and time.monotonic() - self._last_commit >= wait:
            lengths = self.committed_lengths()
            self._last_commit = time.monotonic()
            arrays = list(self.manifest)  # as of now: the main thread may add to it
            self._publishing = self._background().submit(self._publish, lengths, arrays=arrays)

    def close(self, status: str, message: str = "", **attrs: Any) -> None:
        """Finish every write, commit, set the final status and release the writer lock; a
        failed snapshot write makes it ``failed`` (and is raised once the store is consistent)."""
        assert status in STATUSES, status
        error = None
        try:
            self.wait_for_writes()
        except StoreError as err:
            error, status, message = err, "failed", str(err)
        except OSError as err:  # the checkpoint: the one before it stands
            error, status = self._disk_full(err), "failed"
            message = str(error)
        finally:
            if self._io is not None:
                self._io.shutdown()
                self._io = None
        finished = status in FINISHED and error is None
        try:
            # a finished run is never resumed: its checkpoint goes (a 3x512 MLP's is 15 MB)
            dropped = {"checkpoint": None} if finished else {}
            # every row on disk and the arrays cut to them before the last commit: a kill
            # after it leaves a finished store in its final shape
            self.committed_lengths()
            with contextlib.suppress(OSError):  # untrimmed, the store is just as readable
                for app in self._appenders():
                    app.trim()
            self.commit(status=status, message=message, **attrs, **dropped)
            if finished:
                shutil.rmtree(self.path / "checkpoint", ignore_errors=True)
        except OSError as err:  # disk full: the last commit still stands, and says so
            error = error or self._disk_full(err)
            with contextlib.suppress(OSError):
                self.root.update_attributes({"status": "failed", "message": str(error)})
        finally:
            self.lock.release()
        if error is not None:
            raise error

    def _disk_full(self, err: OSError) -> StoreError:
        return StoreError(
            f"writing to {self.path} failed ({err.strerror or err}); the store keeps every "
            "step up to its last commit: free disk space and `dynalign record --resume` it"
        )
