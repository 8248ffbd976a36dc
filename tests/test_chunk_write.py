"""Chunks the run writer writes itself (``dynalign.chunk_write``) are the files zarr writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

from dynalign import durable
from dynalign.chunk_write import write_chunk
from dynalign.durable import DurableStore
from dynalign.store import PARTIAL_FILE

CASES = [  # dtype, shape, chunks, compressors, the chunk written
    ("float32", (1024, 4), (512, 4), "auto", (1, 0)),
    ("float64", (512,), (512,), "auto", (0,)),
    ("int64", (20, 3, 5), (10, 3, 5), None, (1, 0, 0)),
    ("float32", (1, 6, 7), (1, 6, 7), None, (0, 0, 0)),
    ("float64", (8, 2), (4, 2), ZstdCodec(level=3, checksum=True), (1, 0)),
    ("uint32", (6,), (6,), None, (0,)),
]


def _pair(tmp_path, dtype, shape, chunks, compressors, serializer="auto"):
    """The same array twice, in two stores: one written by zarr, one by ``write_chunk``."""
    arrays = []
    for name in ("zarr", "mine"):
        root = zarr.create_group(DurableStore(tmp_path / f"{name}.zarr"), zarr_format=3)
        arrays.append(
            root.create_array(
                "g/a",
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                compressors=compressors,
                serializer=serializer,
                fill_value=0,
                config={"write_empty_chunks": True},
            )
        )
    return arrays


@pytest.mark.parametrize(("dtype", "shape", "chunks", "compressors", "index"), CASES)
def test_a_chunk_is_written_byte_for_byte_as_zarr_writes_it(
    tmp_path, dtype, shape, chunks, compressors, index
):
    theirs, mine = _pair(tmp_path, dtype, shape, chunks, compressors)
    values = np.random.default_rng(0).normal(size=chunks) * 1000
    values = values.astype(dtype)
    where = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks, strict=True))
    theirs[where] = values
    write_chunk(mine, index, values)
    key = "g/a/" + theirs.metadata.encode_chunk_key(index)
    written = (tmp_path / "mine.zarr" / key).read_bytes()
    assert written == (tmp_path / "zarr.zarr" / key).read_bytes()
    np.testing.assert_array_equal(
        zarr.open_array(tmp_path / "mine.zarr", path="g/a")[where], values
    )
    assert key in mine.store_path.store._written  # fsynced by the next commit
    assert not list((tmp_path / "mine.zarr").rglob("*.partial"))


def test_a_chunk_replaces_the_last_one_and_values_of_another_dtype_are_converted(tmp_path):
    _, mine = _pair(tmp_path, "float32", (4, 2), (4, 2), "auto")
    write_chunk(mine, (0, 0), np.ones((4, 2)))
    write_chunk(mine, (0, 0), np.arange(8.0).reshape(4, 2))  # float64 values
    np.testing.assert_array_equal(mine[...], np.arange(8, dtype=np.float32).reshape(4, 2))


def test_codecs_it_does_not_know_take_zarrs_own_path(tmp_path):
    """A Blosc-compressed array (never written by a run) is written by zarr, all the same."""
    theirs, mine = _pair(tmp_path, "float32", (6, 2), (3, 2), BloscCodec())
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    write_chunk(mine, (1, 0), values)
    theirs[3:6] = values
    np.testing.assert_array_equal(mine[...], theirs[...])
    assert mine[3:6].tolist() == values.tolist()


def test_a_big_endian_serializer_is_honoured(tmp_path):
    theirs, mine = _pair(tmp_path, "float64", (3,), (3,), None, BytesCodec(endian="big"))
    values = np.array([1.5, -2.0, 3.25])
    theirs[...] = values
    write_chunk(mine, (0,), values)
    key = "g/a/" + theirs.metadata.encode_chunk_key((0,))
    assert (tmp_path / "mine.zarr" / key).read_bytes() == values.astype(">f8").tobytes()
    assert (tmp_path / "mine.zarr" / key).read_bytes() == (
        tmp_path / "zarr.zarr" / key
    ).read_bytes()


def test_a_part_of_a_chunk_is_refused(tmp_path):
    _, mine = _pair(tmp_path, "float32", (8, 2), (4, 2), None)
    with pytest.raises(ValueError, match=r"has shape \(4, 2\), not \(3, 2\)"):
        write_chunk(mine, (0, 0), np.zeros((3, 2), np.float32))


def test_a_write_that_fails_leaves_the_old_chunk_and_no_temporary_file(tmp_path, monkeypatch):
    """A full disk while the new chunk is written: the file in place is the previous chunk,
    whole, and the temporary file is gone."""
    _, mine = _pair(tmp_path, "float32", (4,), (4,), None)
    write_chunk(mine, (0,), np.ones(4, np.float32))

    class FullDisk:
        def __init__(self, path, mode):
            self.path = path

        def __enter__(self):
            open(self.path, "wb").close()  # the temporary file exists, empty
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable, "open", FullDisk, raising=False)  # the module's open()
    with pytest.raises(OSError, match="No space"):
        write_chunk(mine, (0,), np.zeros(4, np.float32))
    monkeypatch.undo()
    np.testing.assert_array_equal(mine[...], np.ones(4, np.float32))
    assert not list((tmp_path / "mine.zarr").rglob("*.partial"))


def test_its_temporary_files_are_the_ones_a_writer_clears_after_a_kill(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real(src, dst)

    _, mine = _pair(tmp_path, "float32", (4,), (4,), None)
    monkeypatch.setattr(os, "replace", spy)
    write_chunk(mine, (0,), np.ones(4, np.float32))
    monkeypatch.undo()
    assert len(seen) == 1 and PARTIAL_FILE.search(seen[0]), seen
