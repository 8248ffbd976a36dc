"""The run store: a zarr v3 group written while the run goes, read back as an xarray DataTree.

``RunWriter`` creates every array up front (resizable along time), buffers rows in fixed-size
numpy blocks and appends them a chunk at a time, so memory stays flat however long the run is,
and a run that stops early leaves every completed chunk on disk. Weight snapshots, the large
writes, go to disk on a background thread while training goes on: one at a time, each copied
before the next step changes the weights. ``open_run`` checks that a path holds a dynalign run
and opens it lazily.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

SCHEMA_VERSION = 1
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")


class StoreError(ValueError):
    """A path that is not (or no longer) a readable dynalign run store."""


@dataclass(frozen=True)
class Variable:
    """One recorded variable: what it is called, which dims it has, what it means."""

    name: str
    per_layer: bool
    units: str
    long_name: str
    dtype: str = "float32"


STEP_SCALARS = (
    Variable("epoch", False, "1", "epoch the step belongs to (1-based)", "int64"),
    Variable("loss", False, "1", "training loss of the minibatch"),
    Variable("batch_accuracy", False, "1", "fraction of the minibatch classified correctly"),
    Variable("lr", False, "1", "learning rate used for the step"),
)

EPOCH_VARIABLES = (
    Variable("train_loss", False, "1", "loss on the whole training split"),
    Variable("train_accuracy", False, "1", "accuracy on the whole training split"),
    Variable("val_loss", False, "1", "loss on the validation split"),
    Variable("val_accuracy", False, "1", "accuracy on the validation split"),
    Variable("step", False, "1", "optimiser step at the end of the epoch", "int64"),
)


def _fill(dtype: str) -> Any:
    return np.nan if dtype.startswith("float") else 0


class _Appender:
    """A buffered, chunk-aligned append to a group of arrays sharing a leading dimension."""

    def __init__(
        self,
        group: zarr.Group,
        dim: str,
        columns: dict[str, tuple],
        chunk: int,
        compress: bool = True,
    ):
        self.chunk, self.n, self.filled = chunk, 0, 0
        self.arrays: dict[str, zarr.Array] = {}
        self.buffers: dict[str, np.ndarray] = {}
        for name, (trailing, dtype, dims, attrs) in columns.items():
            self.arrays[name] = group.create_array(
                name,
                shape=(0, *trailing),
                chunks=(chunk, *trailing),
                dtype=dtype,
                fill_value=_fill(dtype),
                dimension_names=(dim, *dims),
                attributes=attrs,
                compressors="auto" if compress else None,
            )
            self.buffers[name] = np.full((chunk, *trailing), _fill(dtype), dtype=dtype)

    def row(self) -> int:
        """Index of the buffer row to fill next (flushes a full buffer first)."""
        if self.filled == self.chunk:
            self.flush()
        self.filled += 1
        return self.filled - 1

    def flush(self) -> None:
        if not self.filled:
            return
        end = self.n + self.filled
        for name, arr in self.arrays.items():
            buf = self.buffers[name]
            arr.resize((end, *arr.shape[1:]))
            arr[self.n : end] = buf[: self.filled]
            buf.fill(_fill(str(buf.dtype)))
        self.n, self.filled = end, 0


class RunWriter:
    """Writes one run. Create it, append rows as the run goes, then ``close(status)``."""

    def __init__(
        self,
        path: str | Path,
        attrs: dict[str, Any],
        layers: dict[str, tuple[int, ...]],
        has_feedback: bool,
        extra_step_terms: tuple[str, ...] = (),
        step_variables: tuple[Variable, ...] = (),
        chunk: int = 512,
        image_shape: tuple[int, ...] | None = None,
        n_probe: int = 0,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise StoreError(
                    f"{self.path} already exists; choose another --out or pass --overwrite"
                )
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        self.layers = list(layers)
        self._io: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self.root = zarr.open_group(str(self.path), mode="w", zarr_format=3)
        self.root.attrs.update(
            {
                "schema_version": SCHEMA_VERSION,
                "status": "running",
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "layers": self.layers,
                **attrs,
            }
        )
        n_layers = len(self.layers)

        steps = self.root.create_group("steps")
        names = steps.create_array(
            "layer",
            shape=(n_layers,),
            dtype=str,
            dimension_names=("layer",),
            attributes={"long_name": "layer (module path)", "units": "1"},
        )
        names[:] = np.array(self.layers, dtype=object)
        columns = {
            "step": ((), "int64", (), {"units": "1", "long_name": "optimiser step (1-based)"})
        }
        for v in STEP_SCALARS:
            columns[v.name] = ((), v.dtype, (), {"units": v.units, "long_name": v.long_name})
        for term in extra_step_terms:
            columns[term] = ((), "float32", (), {"units": "1", "long_name": term.replace("_", " ")})
        for v in step_variables:
            trailing, dims = ((n_layers,), ("layer",)) if v.per_layer else ((), ())
            columns[v.name] = (
                trailing,
                v.dtype,
                dims,
                {"units": v.units, "long_name": v.long_name},
            )
        self.steps = _Appender(steps, "step", columns, chunk)

        epochs = self.root.create_group("epochs")
        columns = {"epoch": ((), "int64", (), {"units": "1", "long_name": "epoch (1-based)"})}
        for v in EPOCH_VARIABLES:
            columns[v.name] = ((), v.dtype, (), {"units": v.units, "long_name": v.long_name})
        self.epochs = _Appender(epochs, "epoch", columns, 64)

        self.snapshots: dict[str, _Appender] = {}
        snaps = self.root.create_group("snapshots")
        for name, shape in layers.items():
            dims = ("out", "in", "kh", "kw")[: len(shape)]
            cols = {
                "snapshot_step": (
                    (),
                    "int64",
                    (),
                    {"units": "1", "long_name": "step the snapshot was taken after (0: initial)"},
                ),
                "weight": (shape, "float32", dims, {"units": "1", "long_name": "forward weight W"}),
            }
            if has_feedback:
                cols["feedback"] = (
                    shape,
                    "float32",
                    dims,
                    {"units": "1", "long_name": "feedback weight B"},
                )
            # trained weights are near-random floats: compressing them costs time, saves ~5%
            self.snapshots[name] = _Appender(
                snaps.create_group(name), "snapshot", cols, 1, compress=False
            )

        self.reconstructions = None
        if image_shape is not None:
            rec = self.root.create_group("reconstructions")
            rec.attrs["image_shape"] = list(image_shape)
            n_pix = int(np.prod(image_shape))
            self._rec_group = rec
            self.reconstructions = _Appender(
                rec,
                "snapshot",
                {
                    "snapshot_step": (
                        (),
                        "int64",
                        (),
                        {"units": "1", "long_name": "step of the reconstruction"},
                    ),
                    "reconstruction": (
                        (n_probe, n_pix),
                        "float32",
                        ("probe", "pixel"),
                        {"units": "1", "long_name": "reconstruction of the probe inputs"},
                    ),
                },
                1,
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
        self.epochs.flush()  # epochs are few: write each at once so a killed run keeps them

    def snapshot(
        self,
        step: int,
        weights: dict[str, np.ndarray],
        feedback: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Copy W (and B) now; write them on the background thread (see ``close``)."""
        self._finish_snapshot()  # its buffers are about to be refilled
        for name, app in self.snapshots.items():
            i = app.row()
            app.buffers["snapshot_step"][i] = step
            app.buffers["weight"][i] = weights[name]
            if feedback is not None and "feedback" in app.buffers:
                app.buffers["feedback"][i] = feedback[name]
        if self._io is None:
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynalign-snapshot")
        self._pending = self._io.submit(self._flush_snapshots)

    def _flush_snapshots(self) -> None:
        for app in self.snapshots.values():
            app.flush()

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
        units: str,
        long_name: str,
    ) -> None:
        """A fixed array written once (probe inputs, constraint signs, unit signs)."""
        g = self.root.require_group(group)
        arr = g.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            dimension_names=dims,
            attributes={"units": units, "long_name": long_name},
        )
        arr[...] = values

    def close(self, status: str, message: str = "", **attrs: Any) -> None:
        """Finish every write and set the final status; a failed snapshot write makes it
        ``failed`` (and is raised once the store is consistent)."""
        assert status in STATUSES, status
        error = None
        try:
            self._finish_snapshot()
        except StoreError as err:
            error, status, message = err, "failed", str(err)
        finally:
            if self._io is not None:
                self._io.shutdown()
                self._io = None
        self.steps.flush()
        self.epochs.flush()
        self.root.attrs.update({"status": status, "message": message, **attrs})
        if error is not None:
            raise error


def open_run(path: str | Path) -> xr.DataTree:
    """Open a run store lazily as an ``xarray.DataTree`` after checking that it is one."""
    path = Path(path)
    if not path.exists():
        raise StoreError(
            f"{path} does not exist; give the path of a run store written by `dynalign record`"
        )
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as err:  # zarr raises several types for foreign or damaged directories
        raise StoreError(
            f"{path} is not a readable zarr store ({type(err).__name__}: {err})"
        ) from None
    if "schema_version" not in attrs:
        raise StoreError(
            f"{path} is a zarr store but not a dynalign run (no schema_version attribute)"
        )
    if attrs["schema_version"] != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {attrs['schema_version']}; this dynalign reads version "
            f"{SCHEMA_VERSION}: open it with the dynalign version that wrote it "
            f"({attrs.get('dynalign_version')})"
        )
    try:
        return xr.open_datatree(str(path), engine="zarr", consolidated=False)
    except Exception as err:
        raise StoreError(
            f"{path} is damaged and cannot be opened ({type(err).__name__}: {err})"
        ) from None


def run_config(tree: xr.DataTree) -> dict[str, Any]:
    """The run's configuration as a nested dict."""
    return json.loads(tree.attrs["config"])
