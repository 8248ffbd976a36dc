"""Whole chunks written straight to the run's store: the bytes zarr writes, without its Python.

zarr's ``setitem`` takes a chunk through an asyncio pipeline (tasks, a thread for the codec, a
thread for the file): about 0.6 ms of Python per array, however small the chunk. A store's
periodic work writes some 40 arrays every hundred steps (the step rows at each commit, a
snapshot, a checkpoint), and on a 13 ms training step that Python, on the main thread or
holding the GIL on the writer's thread, cost 4% of a probed step. The run writer only ever
writes whole chunks of arrays it created, with the codecs it chose (little-endian bytes, then
Zstandard or nothing), so it encodes them here with the same codec (numcodecs', which zarr
calls) and writes the file as zarr does: to a temporary name, then renamed into place. Any other
codec takes zarr's own path. Tested byte for byte against zarr's writes of the same chunks.
"""

from __future__ import annotations

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec

from .durable import DurableStore


def write_chunk(array: zarr.Array, index: tuple[int, ...], values: np.ndarray) -> None:
    """Write ``values`` as the chunk at chunk coordinates ``index`` of ``array`` (a whole
    chunk: its shape is the array's chunk shape), replacing the chunk file atomically."""
    if values.shape != array.chunks:
        raise ValueError(f"a chunk of {array.path} has shape {array.chunks}, not {values.shape}")
    store = array.store_path.store
    data = _encode(array, values)
    if data is None or not isinstance(store, DurableStore):  # not a chunk this module knows
        array[
            tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, array.chunks, strict=True))
        ] = values
        return
    key = array.metadata.encode_chunk_key(index)
    store.put(f"{array.path}/{key}" if array.path else key, data)


_ZSTD: dict[tuple[int, bool], Zstd] = {}


def _encode(array: zarr.Array, values: np.ndarray) -> memoryview | bytes | None:
    """The chunk's bytes as ``array``'s codecs make them, or None for codecs not handled."""
    codecs = array.metadata.codecs
    first = codecs[0] if codecs else None
    if not isinstance(first, BytesCodec) or not all(isinstance(c, ZstdCodec) for c in codecs[1:]):
        return None
    order = ">" if first.endian is not None and first.endian.value == "big" else "<"
    dtype = np.dtype(array.dtype).newbyteorder(order)
    data: memoryview | bytes = memoryview(np.ascontiguousarray(values, dtype=dtype)).cast("B")
    for codec in codecs[1:]:
        settings = (codec.level, codec.checksum)
        if settings not in _ZSTD:
            _ZSTD[settings] = Zstd(level=codec.level, checksum=codec.checksum)
        data = _ZSTD[settings].encode(data)
    return data
