"""What goes wrong around a render that is nobody's request's fault: the job store locked or away, the disk full,
a stored input gone, the file store failing. Each room raises these typed exceptions (or lets the library's own
through) and `classify` turns any exception into one `Fault` with a stable code, so the engine decides once
whether a job is tried again, and the API answers once with the right status.

Nothing here imports a web framework or torch.
"""

from __future__ import annotations

import errno
import sqlite3
from dataclasses import dataclass
from typing import Any


class StoreBusy(Exception):
    """The job store could not answer within its deadline (locked by another process, or slow)."""


class StorageFull(OSError):
    """No space left where darkroom writes (the data dir, the jobs database, a bucket over its quota)."""

    def __init__(self, what: str = "storage") -> None:
        super().__init__(errno.ENOSPC, f"no space left for {what}")


class InputMissing(Exception):
    """A job's stored input could not be found (deleted, or written by a front end that shares no files)."""


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_SQLITE_FULL = 13
_SQLITE_BUSY = (5, 6)
_PG_DISK_FULL = "53100"
_PG_BUSY = {"55P03", "57014"}  # lock_not_available, query_canceled (statement/lock timeout)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the disk or quota is full."""
    for e in _chain(exc):
        if isinstance(e, StorageFull):
            return True
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return True
        if isinstance(e, sqlite3.Error) and (getattr(e, "sqlite_errorcode", 0) & 0xFF) == _SQLITE_FULL:
            return True
        if getattr(e, "sqlstate", None) == _PG_DISK_FULL:
            return True
        if _s3_code(e) in ("EntityTooLarge", "QuotaExceeded", "XMinioStorageFull"):
            return True
    return False


def is_store_busy(exc: BaseException) -> bool:
    """Whether `exc` says the job store was locked or timed out (try again later)."""
    for e in _chain(exc):
        if isinstance(e, StoreBusy):
            return True
        if isinstance(e, sqlite3.OperationalError) and (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_BUSY:
            return True
        if getattr(e, "sqlstate", None) in _PG_BUSY or type(e).__name__ == "PoolTimeout":
            return True
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _s3_code(exc: BaseException) -> str | None:
    response: Any = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


@dataclass(frozen=True)
class Fault:
    """One failure around a render, as the engine and the API see it."""

    code: str
    """Stable error code a client may branch on."""
    message: str
    """Client-safe: says what happened and what to do, holds no path or trace."""
    environmental: bool = False
    """The machine's problem, not the job's (the disk is full): the job waits, its attempts are not spent."""

    def error(self, attempts: int | None = None) -> dict[str, Any]:
        """The job's `error` object."""
        out: dict[str, Any] = {"code": self.code, "message": self.message, "field": None}
        if attempts is not None:
            out["attempts"] = attempts
        return out


def classify(exc: BaseException) -> Fault:
    """The fault behind any exception raised while preparing, recording or storing a job."""
    if is_disk_full(exc):
        return Fault("storage_full", "the server's storage is full; the task waits and runs once space is freed",
                     environmental=True)
    if is_store_busy(exc):
        return Fault("store_busy", "the job database was busy (locked or slow) and could not record this task")
    if any(isinstance(e, (InputMissing, FileNotFoundError)) for e in _chain(exc)):
        return Fault("input_missing", "a stored input of this task could not be found (it was deleted, or it was "
                     "accepted by a front end that shares no files with this one); submit the task again")
    if any(isinstance(e, OSError) or _s3_code(e) or type(e).__module__.startswith(("botocore", "psycopg"))
           for e in _chain(exc)):
        return Fault("storage_unavailable", "the server's storage or job database failed while handling this task; "
                     "submit it again, and tell the operator if it keeps failing")
    return Fault("generation_failed", "the server failed while preparing or recording this task; the server log has "
                 "details")
