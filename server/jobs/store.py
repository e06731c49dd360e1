"""Durable job store on SQLite (WAL).

A job row is committed before the client hears "accepted"; results and
failures are recorded in the same row. Jobs found `processing` at start-up
were interrupted by a crash and go back to `pending`.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id             TEXT PRIMARY KEY,
    status         TEXT NOT NULL,
    model          TEXT NOT NULL,
    batch_key      TEXT NOT NULL,
    request        TEXT NOT NULL,
    result         TEXT,
    error          TEXT,
    progress_step  INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0,
    attempts       INTEGER NOT NULL DEFAULT 0,
    worker         TEXT,
    created_at     REAL NOT NULL,
    started_at     REAL,
    finished_at    REAL
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS idempotency (
    key        TEXT PRIMARY KEY,
    body_sha   TEXT NOT NULL,
    job_id     TEXT,
    created_at REAL NOT NULL
);
"""

# Columns added after the first release; a database created before them gets them on open.
ADDED_COLUMNS = {
    "weights": "TEXT NOT NULL DEFAULT ''",
    "priority": "INTEGER NOT NULL DEFAULT 0",
    "activation_bytes": "INTEGER NOT NULL DEFAULT 0",
    "estimate": "TEXT",
    "batch": "TEXT",
    "webhook": "TEXT",
    "dialect": "TEXT",
    # How many times the job reached a final state; the final transitions are guarded so this is never above 1.
    "finishes": "INTEGER NOT NULL DEFAULT 0",
    # Name of the API key that submitted the job (quota accounting); NULL when auth is off.
    "owner": "TEXT",
}


class JobStatus(StrEnum):
    """Lifecycle of a job; the words are the hosted API's."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

@dataclass(frozen=True)
class JobRecord:
    """A row of the jobs table."""

    id: str
    status: JobStatus
    model: str
    batch_key: str
    request: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    progress_step: int
    progress_total: int
    attempts: int
    worker: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    weights: str = ""
    priority: int = 0
    estimate: dict[str, Any] | None = None
    batch: dict[str, Any] | None = None
    webhook: dict[str, Any] | None = None
    dialect: dict[str, Any] | None = None
    finishes: int = 0


@dataclass(frozen=True)
class QueuedJob:
    """What the scheduler sees of a pending job: no request body, no pixels."""

    id: str
    model: str
    batch_key: str
    created_at: float
    weights: str = ""
    priority: int = 0
    activation_bytes: int = 0


def new_task_id() -> str:
    """`task_<ms>_<random>`, the hosted platform's shape; 64 random bits make it unguessable."""
    return f"task_{int(time.time() * 1000)}_{secrets.token_hex(8)}"


class JobStore:
    """All job state. Safe to call from the event loop and worker threads (one lock, short statements)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across process crashes (kill -9) in WAL mode; FULL would add power-loss safety.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(SCHEMA)
            have = {r["name"] for r in self._conn.execute("PRAGMA table_info(jobs)")}
            for name, decl in ADDED_COLUMNS.items():
                if name not in have:
                    self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
            self._conn.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at)")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def create(self, job_id: str, model: str, batch_key: str, request: dict[str, Any], weights: str = "",
               priority: int = 0, activation_bytes: int = 0, estimate: dict[str, Any] | None = None,
               max_active: int | None = None, idempotency_key: str | None = None, owner: str | None = None) -> bool:
        """Insert a pending job; returns only after the row is committed.

        `idempotency_key` (reserved earlier) is bound to the job in the same transaction.

        With `max_active`, the insert happens only while fewer jobs are pending or processing (checked in the
        same transaction, so concurrent submits cannot overshoot); False when the queue was full.
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if max_active is not None:
                    (active,) = self._conn.execute("SELECT COUNT(*) FROM jobs WHERE status IN (?, ?)",
                                                   (JobStatus.PENDING, JobStatus.PROCESSING)).fetchone()
                    if active >= max_active:
                        self._conn.execute("ROLLBACK")
                        return False
                self._conn.execute(
                    "INSERT INTO jobs (id, status, model, batch_key, request, created_at, weights, priority, "
                    "activation_bytes, estimate, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, JobStatus.PENDING, model, batch_key, json.dumps(request), time.time(), weights,
                     priority, activation_bytes, json.dumps(estimate) if estimate is not None else None, owner),
                )
                if idempotency_key is not None:
                    self._conn.execute("UPDATE idempotency SET job_id = ? WHERE key = ?", (job_id, idempotency_key))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return True

    def set_batch(self, job_ids: list[str], batch: dict[str, Any]) -> None:
        """Record on each job which batch ran it (id, size, whether the call was shared, its position)."""
        with self._lock:
            for position, jid in enumerate(job_ids):
                self._conn.execute("UPDATE jobs SET batch = ? WHERE id = ?",
                                   (json.dumps({**batch, "position": position}), jid))

    def set_dialect_note(self, job_id: str, note: dict[str, Any]) -> None:
        """Keep what a dialect needs to answer about the job later in its own terms (model name, input)."""
        with self._lock:
            self._conn.execute("UPDATE jobs SET dialect = ? WHERE id = ?", (json.dumps(note), job_id))

    def set_webhook(self, job_id: str, webhook: dict[str, Any]) -> None:
        """Attach a webhook (URL, dialect, events, secret, attempts) to a job."""
        with self._lock:
            self._conn.execute("UPDATE jobs SET webhook = ? WHERE id = ?", (json.dumps(webhook), job_id))

    def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any], delivered: str | None) -> None:
        """Record one delivery attempt (and, when it succeeded, the event as delivered)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute("SELECT webhook FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is not None and row["webhook"]:
                    hook = json.loads(row["webhook"])
                    hook["attempts"].append(attempt)
                    if delivered and delivered not in hook["delivered"]:
                        hook["delivered"].append(delivered)
                    self._conn.execute("UPDATE jobs SET webhook = ? WHERE id = ?", (json.dumps(hook), job_id))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def owed_webhooks(self) -> list[str]:
        """Finished jobs whose completion webhook was never delivered (a restart resumes them)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, webhook FROM jobs WHERE webhook IS NOT NULL AND status IN (?, ?, ?)",
                (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED),
            ).fetchall()
        owed = []
        for r in rows:
            hook = json.loads(r["webhook"])
            if "completed" in hook["events"] and "completed" not in hook["delivered"] and \
                    len(hook["attempts"]) < 50:
                owed.append(r["id"])
        return owed

    def requeue(self, job_ids: list[str]) -> int:
        """Put claimed jobs back to pending (their worker was taken out). Returns how many."""
        with self._lock:
            n = 0
            for jid in job_ids:
                n += self._conn.execute(
                    "UPDATE jobs SET status = ?, worker = NULL, progress_step = 0 WHERE id = ? AND status = ?",
                    (JobStatus.PENDING, jid, JobStatus.PROCESSING),
                ).rowcount
        return n

    def pending_by_weights(self) -> dict[str, int]:
        """Pending jobs per weights name (the queue per model)."""
        with self._lock:
            rows = self._conn.execute("SELECT weights, COUNT(*) AS n FROM jobs WHERE status = ? GROUP BY weights",
                                      (JobStatus.PENDING,)).fetchall()
        return {r["weights"]: r["n"] for r in rows}

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None for an unknown id."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def pending(self, limit: int = 1000) -> list[QueuedJob]:
        """Pending jobs, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, model, batch_key, created_at, weights, priority, activation_bytes FROM jobs "
                "WHERE status = ? ORDER BY created_at, id LIMIT ?",
                (JobStatus.PENDING, limit),
            ).fetchall()
        return [QueuedJob(r["id"], r["model"], r["batch_key"], r["created_at"], r["weights"], r["priority"],
                          r["activation_bytes"]) for r in rows]

    def queue_position(self, job_id: str) -> int | None:
        """0-based position among pending jobs, or None when the job is not pending."""
        with self._lock:
            row = self._conn.execute("SELECT status, created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] != JobStatus.PENDING:
                return None
            (ahead,) = self._conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ? AND (created_at < ? OR (created_at = ? AND id < ?))",
                (JobStatus.PENDING, row["created_at"], row["created_at"], job_id),
            ).fetchone()
        return int(ahead)

    def claim(self, job_ids: list[str], worker: str) -> list[JobRecord]:
        """Atomically move the still-pending ones of `job_ids` to processing for `worker`."""
        now = time.time()
        claimed = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for jid in job_ids:
                    cur = self._conn.execute(
                        "UPDATE jobs SET status = ?, worker = ?, started_at = ?, attempts = attempts + 1 "
                        "WHERE id = ? AND status = ?",
                        (JobStatus.PROCESSING, worker, now, jid, JobStatus.PENDING),
                    )
                    if cur.rowcount:
                        claimed.append(jid)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            rows = [self._conn.execute("SELECT * FROM jobs WHERE id = ?", (j,)).fetchone() for j in claimed]
        return [_record(r) for r in rows]

    def set_progress(self, job_id: str, step: int, total: int) -> None:
        """Record denoising progress of a running job."""
        with self._lock:
            self._conn.execute(
                "UPDATE jobs SET progress_step = ?, progress_total = ? WHERE id = ?", (step, total, job_id)
            )

    def complete(self, job_id: str, result: dict[str, Any], attempt: int | None = None) -> bool:
        """Mark done with its result (outputs must already be on disk). See `_finish` for `attempt`."""
        return self._finish(job_id, JobStatus.COMPLETED, attempt, result=result)

    def fail(self, job_id: str, error: dict[str, Any], attempt: int | None = None) -> bool:
        """Mark failed with a client-safe error object."""
        return self._finish(job_id, JobStatus.FAILED, attempt, error=error)

    def mark_cancelled(self, job_id: str, attempt: int | None = None) -> bool:
        """A running job stopped at a step boundary on request."""
        return self._finish(job_id, JobStatus.CANCELLED, attempt,
                            error={"code": "cancelled", "message": "the task was cancelled on request", "field": None})

    def cancel_if_pending(self, job_id: str) -> bool:
        """Cancel a job no worker has claimed yet; False if it is not pending (any more)."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ?, finishes = finishes + 1 "
                "WHERE id = ? AND status = ?",
                (JobStatus.CANCELLED, json.dumps({"code": "cancelled", "message": "the task was cancelled on request",
                                                  "field": None}), time.time(), job_id, JobStatus.PENDING),
            )
        return cur.rowcount == 1

    def _finish(self, job_id: str, status: JobStatus, attempt: int | None, result: dict[str, Any] | None = None,
                error: dict[str, Any] | None = None) -> bool:
        """Move a processing job to a final state; False (and nothing written) when it is no longer ours.

        `attempt` is the claim's attempt number: a job re-queued behind a hung or faulted worker and claimed
        again has a higher one, so the stale worker's late answer cannot finish it a second time.
        """
        guard, args = ("AND attempts = ?", (attempt,)) if attempt is not None else ("", ())
        with self._lock:
            cur = self._conn.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, finished_at = ?, finishes = finishes + 1 "
                f"WHERE id = ? AND status = ? {guard}",
                (status, json.dumps(result) if result is not None else None,
                 json.dumps(error) if error is not None else None, time.time(), job_id, JobStatus.PROCESSING,
                 *args),
            )
        return cur.rowcount == 1

    def requeue_interrupted(self) -> int:
        """At start-up: jobs left `processing` by a crash go back to `pending`, and Idempotency-Key reservations
        whose request died before committing a job are released (the client's retry may use the key).
        Returns how many jobs were re-queued."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE jobs SET status = ?, worker = NULL, progress_step = 0 WHERE status = ?",
                (JobStatus.PENDING, JobStatus.PROCESSING),
            )
            self._conn.execute("DELETE FROM idempotency WHERE job_id IS NULL")
        return cur.rowcount

    def jobs_since(self, owner: str, since: float) -> tuple[int, float]:
        """(jobs `owner` submitted since `since`, creation time of the oldest of them) for quota checks."""
        with self._lock:
            n, oldest = self._conn.execute("SELECT COUNT(*), MIN(created_at) FROM jobs WHERE owner = ? AND "
                                           "created_at >= ?", (owner, since)).fetchone()
        return int(n), float(oldest or since)

    def active_count(self) -> int:
        """Jobs accepted and not finished (pending or processing)."""
        with self._lock:
            (n,) = self._conn.execute("SELECT COUNT(*) FROM jobs WHERE status IN (?, ?)",
                                      (JobStatus.PENDING, JobStatus.PROCESSING)).fetchone()
        return int(n)

    def reserve_idempotency_key(self, key: str, body_sha: str) -> tuple[bool, str | None, str]:
        """Claim `key` for a request whose body hashes to `body_sha`.

        Returns (new, job_id, stored_body_sha): new=True when this call reserved the key (the caller then
        passes it to `create`, or releases it with `release_idempotency_key`); otherwise the job already bound to it (None while the first
        request is still being accepted) and the body hash it was first used with.
        """
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO idempotency (key, body_sha, job_id, created_at) VALUES (?, ?, NULL, ?)",
                (key, body_sha, time.time()))
            if cur.rowcount:
                return True, None, body_sha
            row = self._conn.execute("SELECT body_sha, job_id FROM idempotency WHERE key = ?", (key,)).fetchone()
        return False, row["job_id"], row["body_sha"]

    def release_idempotency_key(self, key: str) -> None:
        """Free a reserved key whose request was refused before a job was committed."""
        with self._lock:
            self._conn.execute("DELETE FROM idempotency WHERE key = ? AND job_id IS NULL", (key,))

    def counts(self) -> dict[str, int]:
        """Number of jobs per status."""
        with self._lock:
            rows = self._conn.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {r["status"]: r["n"] for r in rows}


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        status=JobStatus(row["status"]),
        model=row["model"],
        batch_key=row["batch_key"],
        request=json.loads(row["request"]),
        result=json.loads(row["result"]) if row["result"] else None,
        error=json.loads(row["error"]) if row["error"] else None,
        progress_step=row["progress_step"],
        progress_total=row["progress_total"],
        attempts=row["attempts"],
        worker=row["worker"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        weights=row["weights"],
        priority=row["priority"],
        estimate=json.loads(row["estimate"]) if row["estimate"] else None,
        batch=json.loads(row["batch"]) if row["batch"] else None,
        webhook=json.loads(row["webhook"]) if row["webhook"] else None,
        dialect=json.loads(row["dialect"]) if row["dialect"] else None,
        finishes=row["finishes"],
    )
