"""The job store on SQLite (WAL): one machine, any number of engine processes on the same file.

`synchronous=FULL` (the default) makes an accepted job survive a power cut, not only a process crash; NORMAL
is durable across crashes in WAL mode and a little faster per submit (benchmarks/store_durability.py).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from server.jobs.leases import holder_gone, owner_id
from server.jobs.store import (
    CANCELLED_ERROR,
    Claim,
    CreateResult,
    JobRecord,
    JobStatus,
    JobStore,
    NewJob,
    QueuedJob,
    Quota,
    Refusal,
    ReservationLost,
    owed,
)

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
    # Name of the API key that submitted the job (quota accounting, history); NULL when auth is off.
    "owner": "TEXT",
    "lease_owner": "TEXT",
    "lease_expires": "REAL",
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
    "files_expired": "INTEGER NOT NULL DEFAULT 0",
}
_JSON_COLUMNS = ("request", "result", "error", "estimate", "batch", "webhook", "dialect")


class SqliteJobStore(JobStore):
    """Jobs in one SQLite file. One connection guarded by a lock: statements are short."""

    def __init__(self, path: Path, lease_s: float = 30.0, synchronous: str = "full") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lease_s = lease_s
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            if synchronous.lower() not in ("full", "normal"):
                raise ValueError("synchronous must be full or normal")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.executescript(SCHEMA)
            have = {r["name"] for r in self._conn.execute("PRAGMA table_info(jobs)")}
            for name, decl in ADDED_COLUMNS.items():
                if name not in have:
                    self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
            self._conn.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, fn: Any) -> Any:
        """Run `fn(conn)` in one IMMEDIATE transaction (committed, or rolled back on any error)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return out

    # ---- submission ---------------------------------------------------------------------------------------
    def create(self, job: NewJob, max_active: int | None = None, quota: Quota | None = None,
               idempotency_key: str | None = None) -> CreateResult:
        def insert(conn: sqlite3.Connection) -> CreateResult:
            now = time.time()
            if max_active is not None:
                (active,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE status IN (?, ?)",
                                         (JobStatus.PENDING, JobStatus.PROCESSING)).fetchone()
                if active >= max_active:
                    return CreateResult(Refusal.QUEUE_FULL)
            if quota is not None and job.owner is not None:
                used, oldest = conn.execute("SELECT COUNT(*), MIN(created_at) FROM jobs WHERE owner = ? AND "
                                            "created_at >= ?", (job.owner, now - quota.window_s)).fetchone()
                if used >= quota.jobs:
                    return CreateResult(Refusal.QUOTA_EXCEEDED, (oldest or now) + quota.window_s - now)
            conn.execute(
                "INSERT INTO jobs (id, status, model, batch_key, request, created_at, weights, priority, "
                "activation_bytes, estimate, owner, webhook, dialect) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, JobStatus.PENDING, job.model, job.batch_key, json.dumps(job.request), now, job.weights,
                 job.priority, job.activation_bytes, _dump(job.estimate), job.owner, _dump(job.webhook),
                 _dump(job.dialect)),
            )
            if idempotency_key is not None and not conn.execute(
                    "UPDATE idempotency SET job_id = ? WHERE key = ? AND job_id IS NULL",
                    (job.id, idempotency_key)).rowcount:
                raise ReservationLost(idempotency_key)  # rolls the insert back
            return CreateResult()

        return self._write(insert)

    def reserve_idempotency_key(self, key: str, body_sha: str, stale_after_s: float) -> tuple[bool, str | None, str]:
        def reserve(conn: sqlite3.Connection) -> tuple[bool, str | None, str]:
            now = time.time()
            # created_at is when the reservation was last touched (see touch_idempotency_key).
            conn.execute("DELETE FROM idempotency WHERE key = ? AND job_id IS NULL AND created_at < ?",
                         (key, now - stale_after_s))
            cur = conn.execute(
                "INSERT OR IGNORE INTO idempotency (key, body_sha, job_id, created_at) VALUES (?, ?, NULL, ?)",
                (key, body_sha, now))
            if cur.rowcount:
                return True, None, body_sha
            row = conn.execute("SELECT body_sha, job_id FROM idempotency WHERE key = ?", (key,)).fetchone()
            return False, row["job_id"], row["body_sha"]

        return self._write(reserve)

    def touch_idempotency_key(self, key: str) -> None:
        with self._lock:
            self._conn.execute("UPDATE idempotency SET created_at = ? WHERE key = ? AND job_id IS NULL",
                               (time.time(), key))

    def release_idempotency_key(self, key: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM idempotency WHERE key = ? AND job_id IS NULL", (key,))

    def release_stale_reservations(self, older_than_s: float) -> int:
        with self._lock:
            return self._conn.execute("DELETE FROM idempotency WHERE job_id IS NULL AND created_at < ?",
                                      (time.time() - older_than_s,)).rowcount

    # ---- reading ------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def pending(self, limit: int = 1000) -> list[QueuedJob]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {QueuedJob.COLUMNS} FROM jobs WHERE status = ? ORDER BY created_at, id "
                                      "LIMIT ?", (JobStatus.PENDING, limit)).fetchall()
        return [QueuedJob.from_row(r) for r in rows]

    def pending_by_weights(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT weights, COUNT(*) AS n FROM jobs WHERE status = ? GROUP BY weights",
                                      (JobStatus.PENDING,)).fetchall()
        return {r["weights"]: r["n"] for r in rows}

    def queue_position(self, job_id: str) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT status, created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] != JobStatus.PENDING:
                return None
            (ahead,) = self._conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ? AND (created_at < ? OR (created_at = ? AND id < ?))",
                (JobStatus.PENDING, row["created_at"], row["created_at"], job_id)).fetchone()
        return int(ahead)

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
        with self._lock:
            rows = self._conn.execute(f"SELECT * FROM jobs WHERE {' AND '.join(where)} "
                                      "ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit)).fetchall()
        return [_record(r) for r in rows]

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self._conn.execute("DELETE FROM jobs WHERE id = ? AND status IN (?, ?, ?)",
                                      (job_id, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
                                      ).rowcount == 1

    def expire_candidates(self, finished_before: float, limit: int = 500) -> list[JobRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM jobs WHERE files_expired = 0 AND status IN (?, ?, ?) AND finished_at < ? "
                "ORDER BY finished_at LIMIT ?", (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED,
                                                 finished_before, limit)).fetchall()
        return [_record(r) for r in rows]

    def mark_files_expired(self, job_ids: list[str]) -> None:
        def mark(conn: sqlite3.Connection) -> None:
            for jid in job_ids:
                conn.execute("UPDATE jobs SET files_expired = 1 WHERE id = ?", (jid,))

        self._write(mark)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {r["status"]: r["n"] for r in rows}

    def active_count(self) -> int:
        with self._lock:
            (n,) = self._conn.execute("SELECT COUNT(*) FROM jobs WHERE status IN (?, ?)",
                                      (JobStatus.PENDING, JobStatus.PROCESSING)).fetchone()
        return int(n)

    def jobs_since(self, owner: str, since: float) -> tuple[int, float]:
        with self._lock:
            n, oldest = self._conn.execute("SELECT COUNT(*), MIN(created_at) FROM jobs WHERE owner = ? AND "
                                           "created_at >= ?", (owner, since)).fetchone()
        return int(n), float(oldest or since)

    # ---- running ------------------------------------------------------------------------------------------
    def claim(self, job_ids: list[str], worker: str, owner: str | None = None) -> list[JobRecord]:
        holder = owner or owner_id(worker)

        def take(conn: sqlite3.Connection) -> list[str]:
            now = time.time()
            taken = []
            for jid in job_ids:
                cur = conn.execute(
                    "UPDATE jobs SET status = ?, worker = ?, started_at = ?, attempts = attempts + 1, "
                    "lease_owner = ?, lease_expires = ?, cancel_requested = 0 WHERE id = ? AND status = ?",
                    (JobStatus.PROCESSING, worker, now, holder, now + self.lease_s, jid, JobStatus.PENDING))
                if cur.rowcount:
                    taken.append(jid)
            return taken

        taken = self._write(take)
        with self._lock:
            rows = [self._conn.execute("SELECT * FROM jobs WHERE id = ?", (j,)).fetchone() for j in taken]
        return [_record(r) for r in rows]

    def renew(self, claims: list[Claim]) -> set[str]:
        if not claims:
            return set()

        def extend(conn: sqlite3.Connection) -> set[str]:
            until = time.time() + self.lease_s
            cancel = set()
            for c in claims:
                conn.execute("UPDATE jobs SET lease_expires = ? WHERE id = ? AND status = ? AND lease_owner = ? "
                             "AND attempts = ?", (until, c.job_id, JobStatus.PROCESSING, c.owner, c.attempt))
                row = conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (c.job_id,)).fetchone()
                if row is not None and row["cancel_requested"]:
                    cancel.add(c.job_id)
            return cancel

        return self._write(extend)

    def requeue_expired(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT id, lease_owner, lease_expires, attempts FROM jobs WHERE status = ?",
                                      (JobStatus.PROCESSING,)).fetchall()
        now = time.time()
        lapsed = [r for r in rows if (r["lease_expires"] or 0) < now or holder_gone(r["lease_owner"])]
        if not lapsed:
            return []

        def give_back(conn: sqlite3.Connection) -> list[str]:
            back = []
            for r in lapsed:
                cur = conn.execute(
                    "UPDATE jobs SET status = ?, worker = NULL, lease_owner = NULL, lease_expires = NULL, "
                    "progress_step = 0 WHERE id = ? AND status = ? AND attempts = ? AND lease_owner IS ?",
                    (JobStatus.PENDING, r["id"], JobStatus.PROCESSING, r["attempts"], r["lease_owner"]))
                if cur.rowcount:
                    back.append(r["id"])
            return back

        return self._write(give_back)

    def requeue(self, job_ids: list[str], claims: list[Claim] | None = None) -> int:
        held = {c.job_id: c for c in claims or []}

        def give_back(conn: sqlite3.Connection) -> int:
            n = 0
            for jid in job_ids:
                guard, args = ("AND lease_owner = ? AND attempts = ?", (held[jid].owner, held[jid].attempt)) \
                    if jid in held else ("", ())
                n += conn.execute(
                    "UPDATE jobs SET status = ?, worker = NULL, lease_owner = NULL, lease_expires = NULL, "
                    f"progress_step = 0 WHERE id = ? AND status = ? {guard}",
                    (JobStatus.PENDING, jid, JobStatus.PROCESSING, *args)).rowcount
            return n

        return self._write(give_back)

    def set_progress(self, job_id: str, step: int, total: int) -> None:
        with self._lock:
            self._conn.execute("UPDATE jobs SET progress_step = ?, progress_total = ? WHERE id = ?",
                               (step, total, job_id))

    def set_batch(self, job_ids: list[str], batch: dict[str, Any]) -> None:
        def record(conn: sqlite3.Connection) -> None:
            for position, jid in enumerate(job_ids):
                conn.execute("UPDATE jobs SET batch = ? WHERE id = ?", (json.dumps({**batch, "position": position}),
                                                                        jid))

        self._write(record)

    def _finish(self, job_id: str, status: JobStatus, claim: Claim | None, result: dict[str, Any] | None = None,
                error: dict[str, Any] | None = None) -> bool:
        guard, args = ("AND lease_owner = ? AND attempts = ?", (claim.owner, claim.attempt)) if claim else ("", ())
        with self._lock:
            cur = self._conn.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, finished_at = ?, finishes = finishes + 1, "
                f"lease_owner = NULL, lease_expires = NULL WHERE id = ? AND status = ? {guard}",
                (status, _dump(result), _dump(error), time.time(), job_id, JobStatus.PROCESSING, *args))
        return cur.rowcount == 1

    def cancel_if_pending(self, job_id: str) -> bool:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ?, finishes = finishes + 1 "
                "WHERE id = ? AND status = ?",
                (JobStatus.CANCELLED, json.dumps(CANCELLED_ERROR), time.time(), job_id, JobStatus.PENDING))
        return cur.rowcount == 1

    def request_cancel(self, job_id: str) -> bool:
        with self._lock:
            return self._conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?",
                                      (job_id, JobStatus.PROCESSING)).rowcount == 1

    # ---- webhooks -----------------------------------------------------------------------------------------
    def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any], delivered: str | None) -> None:
        def record(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT webhook FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None and row["webhook"]:
                hook = json.loads(row["webhook"])
                hook["attempts"].append(attempt)
                if delivered and delivered not in hook["delivered"]:
                    hook["delivered"].append(delivered)
                conn.execute("UPDATE jobs SET webhook = ? WHERE id = ?", (json.dumps(hook), job_id))

        self._write(record)

    def owed_webhooks(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT id, webhook FROM jobs WHERE webhook IS NOT NULL AND status IN "
                                      "(?, ?, ?)", (JobStatus.COMPLETED, JobStatus.FAILED,
                                                    JobStatus.CANCELLED)).fetchall()
        return [r["id"] for r in rows if owed(json.loads(r["webhook"]))]


def _dump(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value) if value is not None else None


def _record(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    for col in _JSON_COLUMNS:
        data[col] = json.loads(data[col]) if data.get(col) else None
    data["status"] = JobStatus(data["status"])
    data["cancel_requested"] = bool(data["cancel_requested"])
    data["files_expired"] = bool(data["files_expired"])
    data.pop("activation_bytes", None)
    return JobRecord(**data)
