"""The PostgreSQL job store's reads: jobs, the queue, positions, listings and counts (the claims and every other
write are in postgres.py)."""

from __future__ import annotations

import time
from typing import Any

from server.jobs.store import JobRecord, JobStatus, QueuedJob

_FINAL = (JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)


class PostgresReads:
    """Read queries over the `jobs` table (mixed into PostgresJobStore, which runs them)."""

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        raise NotImplementedError

    def get(self, job_id: str) -> JobRecord | None:
        row = self._one("SELECT * FROM jobs WHERE id = %s", (job_id,))
        return _record(row) if row else None

    def pending(self, limit: int = 1000) -> list[QueuedJob]:
        rows = self._all(f"SELECT {QueuedJob.COLUMNS} FROM jobs WHERE status = %s AND (not_before IS NULL OR "
                         "not_before <= %s) ORDER BY created_at, id LIMIT %s",
                         (JobStatus.PENDING.value, time.time(), limit))
        return [QueuedJob.from_row(r) for r in rows]

    def pending_by_weights(self) -> dict[str, int]:
        rows = self._all("SELECT weights, COUNT(*) AS n FROM jobs WHERE status = %s GROUP BY weights",
                         (JobStatus.PENDING.value,))
        return {r["weights"]: r["n"] for r in rows}

    def queue_position(self, job_id: str) -> int | None:
        row = self._one(
            "SELECT j.status, (SELECT COUNT(*) FROM jobs o WHERE o.status = %s AND (o.created_at < j.created_at OR "
            "(o.created_at = j.created_at AND o.id < j.id))) AS ahead FROM jobs j WHERE j.id = %s",
            (JobStatus.PENDING.value, job_id))
        if row is None or row["status"] != JobStatus.PENDING:
            return None
        return int(row["ahead"])

    def list_jobs(self, owner: str | None, limit: int, before: tuple[float, str] | None = None,
                  model: str | None = None, status: JobStatus | None = None) -> list[JobRecord]:
        where, args = ["owner IS NOT DISTINCT FROM %s"], [owner]
        if before is not None:
            where.append("(created_at < %s OR (created_at = %s AND id < %s))")
            args += [before[0], before[0], before[1]]
        if model is not None:
            where.append("model = %s")
            args.append(model)
        if status is not None:
            where.append("status = %s")
            args.append(status.value)
        rows = self._all(f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC "
                         "LIMIT %s", (*args, limit))
        return [_record(r) for r in rows]

    def expire_candidates(self, finished_before: float, limit: int = 500) -> list[JobRecord]:
        rows = self._all("SELECT * FROM jobs WHERE NOT files_expired AND status IN (%s, %s, %s) AND finished_at < %s "
                         "ORDER BY finished_at LIMIT %s", (*_FINAL, finished_before, limit))
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in self._all("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")}

    def active_count(self) -> int:
        row = self._one("SELECT COUNT(*) AS n FROM jobs WHERE status IN (%s, %s)",
                        (JobStatus.PENDING.value, JobStatus.PROCESSING.value))
        return int(row["n"]) if row else 0

    def jobs_since(self, owner: str, since: float) -> tuple[int, float]:
        row = self._one("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM jobs WHERE owner = %s AND "
                        "created_at >= %s", (owner, since))
        assert row is not None
        return int(row["n"]), float(row["oldest"] or since)


def _record(row: dict[str, Any]) -> JobRecord:
    data = dict(row)
    data["status"] = JobStatus(data["status"])
    data.pop("activation_bytes", None)
    return JobRecord(**data)
