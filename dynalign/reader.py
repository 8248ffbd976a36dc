"""Reading a run store: the committed prefix as a lazy ``xarray.DataTree``, the writer's state,
and a check that names every missing or damaged array and chunk.

A store may be read while its run writes it, or after the run was killed: every appended array
is taken up to the length the writer last committed (see ``dynalign.store``), so a reader
always sees a consistent prefix, never a half-written row or a NaN-filled snapshot.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from xarray.backends import BackendArray
from xarray.core import indexing

from . import schema
from .schema import READABLE_VERSIONS
from .store import APPENDED, StoreError, array_paths
from .writer_lock import describe_writer, writer_alive

#: groups that hold the writer's private state, not the run's record
PRIVATE_GROUPS = ("checkpoint",)
#: zarr warns of every file outside the hierarchy: a writer's temporary ``*.partial`` files
#: (there while it writes, and for good after a kill) or a user's notes; no reader's concern
_FOREIGN_FILE = "Object at .* is not recognized as a component of a Zarr hierarchy"


def _quiet_about_foreign_files(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_FOREIGN_FILE)
            return function(*args, **kwargs)

    return wrapper


class _Prefix(BackendArray):
    """The first ``n`` rows of a zarr array, read lazily (only what is indexed)."""

    def __init__(self, array: zarr.Array, n: int):
        self.array = array
        self.shape = (n, *array.shape[1:])
        self.dtype = array.dtype

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._read
        )

    def _read(self, key: tuple) -> np.ndarray:
        return np.asarray(self.array[self._bounded(key)])

    def _bounded(self, key: tuple) -> tuple:
        """``key`` with bounds from the prefix's shape, never the array's (which may be longer):
        slices cut to it, an index past it an IndexError (it would read a row not committed)."""
        return tuple(
            slice(*k.indices(size)) if isinstance(k, slice) else _index(k, size)
            for k, size in zip(key, self.shape, strict=False)
        )


def _index(k: int, size: int) -> int:
    if not -size <= k < size:
        raise IndexError(f"index {k} is out of bounds for a dimension of size {size}")
    return k % size


class _Repeated(_Prefix):
    """A one-row array (``schema.FIXED``) shown as ``n`` copies of its row: a B the rule never
    changed, stored once, appears in every snapshot as schema 3 stored it."""

    def _read(self, key: tuple) -> np.ndarray:
        rows, *rest = self._bounded(key)
        row = np.asarray(self.array[(0, *rest)])
        if isinstance(rows, slice):
            count = len(range(rows.start, rows.stop, rows.step))
            return np.broadcast_to(row, (count, *row.shape)).copy()
        return row


def root_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of the dynalign store at ``path``, checked (StoreError otherwise)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(
            f"{path} does not exist; give the path of a run store written by `dynalign record`"
        )
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as err:  # zarr raises several types for foreign or damaged directories
        raise StoreError(
            f"{path} is not a readable zarr store ({type(err).__name__}: {err}); give the path "
            "of a run store written by `dynalign record`"
        ) from None
    if "schema_version" not in attrs:
        raise StoreError(
            f"{path} is a zarr store but not a dynalign run (no schema_version attribute); "
            "give the path of a run store written by `dynalign record`"
        )
    version = attrs["schema_version"]
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"{path} has schema version {version}; this dynalign reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: open it with the dynalign version that "
            "wrote it "
            f"({attrs.get('dynalign_version')})"
        )
    return attrs


def committed_lengths(attrs: dict[str, Any]) -> dict[str, int] | None:
    """The committed row counts of a store (None for schema 1: its arrays are exact)."""
    if attrs.get("schema_version") == 1:
        return None
    committed = attrs.get("committed")
    if not isinstance(committed, dict) or not all(
        isinstance(committed.get(g), int) and committed[g] >= 0 for g in APPENDED
    ):
        raise StoreError(
            "its committed lengths (attribute 'committed') are missing or malformed, so no "
            "row of it can be trusted; record the run again"
        )
    return committed


@_quiet_about_foreign_files
def open_run(path: str | Path) -> xr.DataTree:
    """Open a run store lazily as an ``xarray.DataTree``: the committed prefix of every array.

    Safe while the run is being written and after it was killed. The writer's private state
    (checkpoints) is left out; plain ``zarr`` reads it.
    """
    path = Path(path)
    attrs = root_attrs(path)
    try:
        if attrs["schema_version"] == 1:  # written whole at the end: arrays are exact
            return xr.open_datatree(str(path), engine="zarr", consolidated=False)
        committed = committed_lengths(attrs)
        root = zarr.open_group(str(path), mode="r")
        nodes: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs=attrs)}
        for name, group in _groups(root):
            nodes[name] = _dataset(group, committed.get(name.split("/")[0]), name)
        tree = xr.DataTree.from_dict(nodes)
        tree.encoding = {"source": str(path)}  # as xarray's own opener records it
        return tree
    except StoreError as err:
        raise StoreError(f"{path}: {err}") from None
    except Exception as err:
        raise StoreError(
            f"{path} is damaged and cannot be opened ({type(err).__name__}: {err}); "
            "`dynalign inspect --check` lists what is wrong"
        ) from None


def _groups(group: zarr.Group, where: str = ""):
    for name, child in sorted(group.groups()):
        path = f"{where}/{name}" if where else name
        if path in PRIVATE_GROUPS:
            continue
        yield path, child
        yield from _groups(child, path)


def _dataset(group: zarr.Group, n: int | None, name: str) -> xr.Dataset:
    """One group's arrays as lazy variables; appended arrays cut to their committed ``n``."""
    append_dim = APPENDED.get(name.split("/")[0])
    variables = {}
    for key, array in sorted(group.arrays()):
        dims = tuple(array.metadata.dimension_names or ())
        attrs = dict(array.attrs)
        length = array.shape[0] if array.ndim else None
        if n is not None and dims[:1] == (append_dim,) and attrs.get(schema.FIXED):
            variables[key] = xr.Variable(
                dims, indexing.LazilyIndexedArray(_Repeated(array, n)), attrs
            )
            continue
        if n is not None and dims[:1] == (append_dim,):
            if array.shape[0] < n:
                raise StoreError(
                    f"{name}/{key} holds {array.shape[0]} rows but {n} were committed: the "
                    "store is damaged; `dynalign inspect --check` lists what is wrong"
                )
            length = n
        if array.ndim == 1 and dims == (key,):  # an index coordinate: small, read now
            data = np.asarray(array[:length])
            if data.dtype.kind == "T":
                data = data.astype(object)
            variables[key] = xr.Variable(dims, data, attrs)
        elif array.ndim == 0:
            variables[key] = xr.Variable(dims, np.asarray(array[()]), attrs)
        else:
            backend = _Prefix(array, length)
            variables[key] = xr.Variable(dims, indexing.LazilyIndexedArray(backend), attrs)
    return xr.Dataset(variables, attrs=dict(group.attrs))


# ----------------------------------------------------------------------------- the writer


def writer_note(path: str | Path, attrs: dict[str, Any]) -> str:
    """One line on a run whose status is still ``running``: live, or killed (and resumable)."""
    if attrs.get("status") != "running":
        return ""
    who = describe_writer(attrs.get("writer"))
    alive = writer_alive(path)
    if alive:
        steps = (attrs.get("committed") or {}).get("steps", "?")
        return f"the run is still going, written by {who}; committed so far: {steps} steps"
    if alive is False:
        return (
            f"status running, but its writer, {who}, is gone: the run was killed; "
            f"`dynalign record --resume {path}` continues it"
        )
    return ""


# ----------------------------------------------------------------------------- checking


@_quiet_about_foreign_files
def check_store(path: str | Path, decode: bool = False) -> list[str]:
    """Every problem of the store at ``path``, one line each (an empty list: none found).

    Checks that every array the writer created is there, that none is shorter than its
    committed length and that every chunk file of the committed region exists; with
    ``decode`` it also reads every chunk, which finds truncated or corrupt ones.
    """
    path = Path(path)
    attrs = root_attrs(path)
    problems: list[str] = []
    try:
        committed = committed_lengths(attrs)
    except StoreError as err:
        return [str(err)]
    root = zarr.open_group(str(path), mode="r")
    expected = list(attrs.get("arrays") or [])
    checkpoint = attrs.get("checkpoint")
    if isinstance(checkpoint, dict):
        slot = checkpoint.get("slot")
        expected += [f"checkpoint/{slot}/{a}" for a in checkpoint.get("arrays", [])]
    if committed is None:  # schema 1: no list of arrays, no empty chunks written
        expected, committed = list(array_paths(root)), {}
    for name in expected:
        try:
            array = root[name]
        except (KeyError, FileNotFoundError, ValueError, json.JSONDecodeError) as err:
            problems.append(f"array {name} is missing or unreadable ({type(err).__name__})")
            continue
        if not isinstance(array, zarr.Array):
            problems.append(f"{name} should be an array but is a group")
            continue
        problems += _check_array(path, name, array, committed, decode)
    return problems


def _check_array(path: Path, name: str, array: zarr.Array, committed: dict, decode: bool):
    problems = []
    dims = tuple(array.metadata.dimension_names or ())
    group = name.split("/")[0]
    length = array.shape[0] if array.ndim else 0
    n = committed.get(group)
    if n is not None and dims[:1] == (APPENDED[group],) and array.attrs.get(schema.FIXED):
        length = min(n, 1)  # written with the first snapshot
    elif n is not None and dims[:1] == (APPENDED[group],):
        if length < n:
            return [f"array {name} holds {length} rows but {n} were committed"]
        length = n
    shape = (length, *array.shape[1:]) if array.ndim else ()
    grid = [range(math.ceil(s / c)) for s, c in zip(shape, array.chunks, strict=True)]
    for index in itertools.product(*grid):
        where = "/".join(map(str, index))
        chunk_file = path / name / "c" / where if index else path / name / "c"
        if committed and not chunk_file.is_file():
            problems.append(f"array {name}: chunk {where or '(single)'} is missing")
            continue
        if decode:
            region = tuple(
                slice(i * c, min((i + 1) * c, s))
                for i, c, s in zip(index, array.chunks, shape, strict=True)
            )
            try:
                array[region]
            except Exception as err:
                problems.append(
                    f"array {name}: chunk {where or '(single)'} cannot be decoded "
                    f"({type(err).__name__}: {err})"
                )
    return problems
