"""Checkpoints: all the state the next training step depends on, as plain arrays in the store.

Model parameters and buffers (feedback tensors, batch-norm statistics, unit signs), optimiser
state, every random generator (torch's, numpy's, the shuffle order's) and the current epoch's
order go into ``checkpoint/<slot>`` as arrays: no pickle, so opening a store never executes
anything. Counters go with the ``checkpoint`` root attribute. There are two slots, written in
turn; the attribute names the complete one and is written in the same atomic commit as the
row counts it belongs to, so a kill while a checkpoint is written leaves the previous one whole.
The arrays are copied when the checkpoint is taken and written, fsynced and committed on the
store's background thread: training does not wait for the disk.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
import zarr

from .chunk_write import write_chunk
from .store import ARRAY_CONFIG, RunWriter, StoreError


def capture(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    order: torch.Tensor | None,
) -> dict[str, np.ndarray]:
    """The training state as named host arrays (written at once, before training goes on)."""
    arrays = {f"model.{k}": _host(t) for k, t in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            arrays[f"optimizer.{index}.{key}"] = _host(value)
    for name, generator in generators.items():
        arrays[f"rng.{name}"] = generator.get_state().numpy()
    arrays["rng.torch"] = torch.get_rng_state().numpy()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    arrays["rng.numpy_keys"] = np.asarray(keys).copy()
    arrays["rng.numpy_pos"] = np.asarray([pos, has_gauss], dtype=np.int64)
    arrays["rng.numpy_gauss"] = np.asarray(cached, dtype=np.float64)
    arrays["order"] = _host(order) if order is not None else np.zeros(0, dtype=np.int64)
    return arrays


def restore(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    arrays: dict[str, np.ndarray],
) -> torch.Tensor | None:
    """Put the captured state back; returns the epoch's order (None: none was drawn)."""
    prefix = "model."
    model.load_state_dict(
        {k[len(prefix) :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(prefix)}
    )
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = torch.from_numpy(value)
    saved = optimizer.state_dict()
    saved["state"] = state
    optimizer.load_state_dict(saved)
    for name, generator in generators.items():
        generator.set_state(torch.from_numpy(arrays[f"rng.{name}"]))
    torch.set_rng_state(torch.from_numpy(arrays["rng.torch"]))
    pos, has_gauss = (int(v) for v in arrays["rng.numpy_pos"])
    keys = arrays["rng.numpy_keys"]
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(arrays["rng.numpy_gauss"])))
    order = arrays["order"]
    return torch.from_numpy(order) if order.size else None


def save(
    writer: RunWriter,
    arrays: dict[str, np.ndarray],
    counters: dict[str, Any],
    snapshot_in_flight: bool = False,
    fixed: frozenset[str] = frozenset(),
    wait: bool = False,
) -> None:
    """Write a checkpoint into the free slot, then commit it with the rows it belongs to.

    The rows are flushed and the arrays copied now; the copies are written and committed on
    the writer's background thread while training goes on (``wait``: before returning; a
    failure is raised by the writer's next commit, or here with ``wait``).
    ``snapshot_in_flight``: without the snapshot still being written, which ``counters`` must
    not count either (see ``RunWriter.snapshot_in_flight``). ``fixed``: arrays whose value
    never changes during the run (a fixed B): written into each slot once by this writer.
    """
    writer.finish_checkpoint()  # the last one: its slot is the one to keep, its copies reused
    lengths = writer.committed_lengths(without_snapshot_in_flight=snapshot_in_flight)
    previous = writer.root.attrs.get("checkpoint")
    slot = "b" if isinstance(previous, dict) and previous.get("slot") == "a" else "a"
    due = {
        name: _copy(writer, name, value)
        for name, value in arrays.items()
        if not (name in fixed and f"{slot}/{name}" in writer.checkpoint_fixed)
    }
    writes = [
        partial(_write, _target(writer, slot, name, value), value) for name, value in due.items()
    ]
    written = {f"{slot}/{name}" for name in due if name in fixed}
    info = {"slot": slot, "committed": lengths, "arrays": sorted(arrays), **counters}
    writer.write_checkpoint(writes, lengths, info, lambda: writer.checkpoint_fixed.update(written))
    if wait:
        writer.finish_checkpoint()


def _copy(writer: RunWriter, name: str, value: np.ndarray) -> np.ndarray:
    """``value`` copied into a buffer kept for ``name`` (training changes the original while
    the copy is written; one checkpoint is written at a time, so one buffer each suffices)."""
    buffer = writer.checkpoint_copies.get(name)
    if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
        buffer = writer.checkpoint_copies[name] = np.empty_like(value)
    np.copyto(buffer, value)
    return buffer


def _write(array: zarr.Array, value: np.ndarray) -> None:
    """``value`` as ``array``, its one chunk (nothing where it has no elements)."""
    if value.size:
        write_chunk(array, (0,) * array.ndim, value.reshape(array.shape))


def _target(writer: RunWriter, slot: str, name: str, value: np.ndarray) -> zarr.Array:
    """The array of ``slot`` that takes ``value`` (reshaped to 1 element where it is 0-d),
    opened once per writer and created (again) where its shape or dtype differ."""
    key = f"{slot}/{name}"
    shape = value.shape or (1,)  # stored with one element: zarr skips a 0-d array's fill chunk
    array = writer.checkpoint_arrays.get(key)
    if array is None or array.shape != shape or array.dtype != value.dtype:
        array = _open(writer.root.require_group(f"checkpoint/{slot}"), name, shape, value)
        writer.checkpoint_arrays[key] = array
    return array


def _open(group: zarr.Group, name: str, shape: tuple, value: np.ndarray) -> zarr.Array:
    """The group's array ``name`` where it has ``shape`` and the value's dtype, else a new one
    in its place."""
    if name in group:
        array = group[name].with_config(ARRAY_CONFIG)
        if array.shape == shape and array.dtype == value.dtype:
            return array
    return group.create_array(
        name,
        shape=shape,
        chunks=tuple(max(1, s) for s in shape),
        dtype=value.dtype,
        dimension_names=tuple(f"{name}_dim{i}" for i in range(len(shape))),
        compressors=None,  # weights and generator states hardly compress
        overwrite=True,
        config=ARRAY_CONFIG,
        attributes={"scalar": value.ndim == 0},
    )


def load(root: zarr.Group) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The last complete checkpoint's arrays and counters (None: the run has none yet)."""
    info = root.attrs.get("checkpoint")
    if not isinstance(info, dict):
        return None
    try:
        group = root[f"checkpoint/{info['slot']}"]
        arrays = {name: _get(group[name]) for name in info["arrays"]}
    except Exception as err:
        raise StoreError(
            f"its last checkpoint cannot be read ({type(err).__name__}: {err}); "
            "`dynalign inspect --check` lists what is damaged"
        ) from None
    return arrays, info


def _get(array: zarr.Array) -> np.ndarray:
    value = np.asarray(array[...])
    return value.reshape(()) if array.attrs.get("scalar") else value


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
