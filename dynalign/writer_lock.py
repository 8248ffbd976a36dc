"""One writer per store: an OS lock on the store's directory, held for the writer's whole life.

The lock is ``flock`` on the directory itself, not on a file in it: the directory outlives every
rewrite of the files inside it (zarr replaces its metadata files atomically, and ``--overwrite``
clears the contents but keeps the directory), and no stray file confuses zarr readers. The kernel
drops the lock when its holder dies, however it dies, so a reader that can take the lock knows
the writer is gone. Who holds it (pid, host, start time) is written to the store's attributes.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path


class LockHeld(Exception):
    """Another live process holds the store's writer lock."""


def writer_identity() -> dict[str, object]:
    """Who writes: recorded in the store so that a reader can name a live or dead writer."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def describe_writer(info: object) -> str:
    """``pid 123 on host (started ...)`` from a store's ``writer`` attribute."""
    if not isinstance(info, dict):
        return "an unknown process"
    text = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    return text + (f" (started {info['started']})" if info.get("started") else "")


class WriterLock:
    """An exclusive, non-blocking lock on a store directory; ``release`` or process exit frees it.

    Readers take the same lock shared for an instant to ask whether a writer lives, so an
    exclusive attempt retries for ``wait`` seconds before it gives up.
    """

    def __init__(self, directory: str | Path, wait: float = 2.0):
        self.directory = Path(directory)
        self._fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self._fd)
                    self._fd = -1
                    raise LockHeld(str(self.directory)) from None
                time.sleep(0.05)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def __del__(self) -> None:
        self.release()


def writer_alive(directory: str | Path) -> bool | None:
    """Whether a live process holds ``directory``'s writer lock (None: cannot tell)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False  # closing below releases it at once
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)
