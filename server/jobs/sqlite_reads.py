"""The SQLite job store's reads: jobs, the queue, positions, listings and counts (the claims and every other
write are in sqlite.py)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from server.jobs.store import JobRecord, JobStatus, QueuedJob

T = TypeVar("T")
_JSON_COLUMNS = ("request", "result", "error", "estimate", "batch", "webhook", "dialect", "retries")


class SqliteReads:
    """Read queries over the `jobs` table (mixed into SqliteJobStore, which runs them on its reader connection)."""

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        raise NotImplementedError

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Row | None:
        raise NotImplementedError

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    def get(self, job_id: str) -> JobRecord | None:
        row = self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _record(row) if row else None

    def pending(self, limit: int = 1000) -> list[QueuedJob]:
        rows = self._all(f"SELECT {QueuedJob.COLUMNS} FROM jobs WHERE status = ? AND (not_before IS NULL OR "
                         "not_before <= ?) ORDER BY created_at, id LIMIT ?", (JobStatus.PENDING, time.time(), limit))
        return [QueuedJob.from_row(r) for r in rows]

    def pending_by_weights(self) -> dict[str, int]:
        rows = self._all("SELECT weights, COUNT(*) AS n FROM jobs WHERE status = ? GROUP BY weights",
                         (JobStatus.PENDING,))
        return {r["weights"]: r["n"] for r in rows}

    def queue_position(self, job_id: str) -> int | None:
        def position(conn: sqlite3.Connection) -> int | None:
            row = conn.execute("SELECT status, created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] != JobStatus.PENDING:
                return None
            (ahead,) = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ? AND (created_at < ? OR (created_at = ? AND id < ?))",
                (JobStatus.PENDING, row["created_at"], row["created_at"], job_id)).fetchone()
            return int(ahead)

        return self._read(position)

    def list_jobs(self, owner: str | None, limit: int, before: tuple[float, str] | None = None,
                  model: str | None = None, status: JobStatus | None = None) -> list[JobRecord]:
        where, args = ["owner IS ?"], [owner]
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [before[0], before[0], before[1]]
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        rows = self._all(f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT ?",
                         (*args, limit))
        return [_record(r) for r in rows]

    def expire_candidates(self, finished_before: float, limit: int = 500) -> list[JobRecord]:
        rows = self._all("SELECT * FROM jobs WHERE files_expired = 0 AND status IN (?, ?, ?) AND finished_at < ? "
                         "ORDER BY finished_at LIMIT ?", (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED,
                                                          finished_before, limit))
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in self._all("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")}

    def active_count(self) -> int:
        row = self._one("SELECT COUNT(*) FROM jobs WHERE status IN (?, ?)", (JobStatus.PENDING, JobStatus.PROCESSING))
        return int(row[0]) if row else 0

    def jobs_since(self, owner: str, since: float) -> tuple[int, float]:
        row = self._one("SELECT COUNT(*), MIN(created_at) FROM jobs WHERE owner = ? AND created_at >= ?",
                        (owner, since))
        assert row is not None
        return int(row[0]), float(row[1] or since)


def _record(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    for col in _JSON_COLUMNS:
        data[col] = json.loads(data[col]) if data.get(col) else None
    data["status"] = JobStatus(data["status"])
    data["cancel_requested"] = bool(data["cancel_requested"])
    data["files_expired"] = bool(data["files_expired"])
    data.pop("activation_bytes", None)
    return JobRecord(**data)
