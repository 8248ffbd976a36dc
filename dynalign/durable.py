"""A zarr ``LocalStore`` whose writes can be made to survive a power cut before a commit.

zarr writes every file to a temporary name and renames it into place, so a killed process never
leaves a half-written file. A power cut is harsher: the kernel may not yet have put the file's
data, or the rename, on the disk. ``sync()`` flushes every file written since the last call, and
the folders holding them, so that the committed lengths written after it never point at data
the disk does not have.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from zarr.storage import LocalStore


class DurableStore(LocalStore):
    """``LocalStore`` that remembers what it wrote until ``sync()`` flushes it to the disk."""

    def __init__(self, root: Path | str, *, read_only: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self._written: set[str] = set()  # keys; set.add and set.pop are atomic across threads

    async def set(self, key, value) -> None:
        await super().set(key, value)
        self._written.add(key)

    async def set_if_not_exists(self, key, value) -> None:
        await super().set_if_not_exists(key, value)
        self._written.add(key)

    def put(self, key: str, data: memoryview | bytes) -> None:
        """``data`` as the file ``key``, now, written as ``set`` writes it: under a temporary
        name (the one zarr gives its own, which a writer clearing up after a kill removes),
        then renamed into place (``dynalign.chunk_write``)."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as f:
                f.write(data)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self._written.add(key)

    def sync(self) -> None:
        """fsync every file written since the last call, then the folders that hold them."""
        folders = set()
        while self._written:
            path = self.root / self._written.pop()
            _fsync(path)
            folders.add(path.parent)
        for folder in folders:
            _fsync(folder)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # replaced or removed since (a shrink): nothing to flush
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
