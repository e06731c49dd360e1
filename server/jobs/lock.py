"""One server per data directory: the jobs database's crash recovery assumes it is the only owner.

At start-up every `processing` row is taken to be an interrupted job and is re-queued; a second server on the
same directory would re-queue the first one's running jobs and run them twice. An advisory lock on a file in
the directory prevents that; the kernel drops it when the process dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DataDirBusy(RuntimeError):
    """Another live server holds the data directory."""


class DataDirLock:
    """An exclusive, non-blocking flock on `<data_dir>/darkroom.lock`."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "darkroom.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DataDirBusy naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirBusy(f"another darkroom server (pid {holder}) is using {self.path.parent}; stop it or "
                              "choose another --data-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel when the process exits)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
