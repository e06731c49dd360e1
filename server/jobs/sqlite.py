"""The job store on SQLite (WAL): one machine, any number of engine processes on the same file.

`synchronous=FULL` (the default) makes an accepted job survive a power cut, not only a process crash; NORMAL
is durable across crashes in WAL mode and a little faster per submit (benchmarks/store_durability.py).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from server.faults import StorageFull, StoreBusy, is_disk_full, is_store_busy
from server.jobs.leases import holder_gone, owner_id
from server.jobs.sqlite_reads import SqliteReads, _record
from server.jobs.store import (
    CANCELLED_ERROR,
    Claim,
    CreateResult,
    JobRecord,
    JobStatus,
    JobStore,
    NewJob,
    Quota,
    Refusal,
    ReservationLost,
    owed,
)

T = TypeVar("T")
_BUSY_TIMEOUT_MS = 10_000
_PROGRESS_WAIT_S = 0.1

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
CREATE TABLE IF NOT EXISTS secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
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
    # A job given back after a failure around its render waits until then (backoff), with each failure listed.
    "not_before": "REAL",
    "retries": "TEXT",
    "preview_step": "INTEGER NOT NULL DEFAULT 0",
}


class SqliteJobStore(SqliteReads, JobStore):
    """Jobs in one SQLite file. Writes go through one connection under a lock (statements are short); reads have
    a connection of their own, so in WAL mode a write waiting for another process's lock never holds them up."""

    def __init__(self, path: Path, lease_s: float = 30.0, synchronous: str = "full") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lease_s = lease_s
        if synchronous.lower() not in ("full", "normal"):
            raise ValueError("synchronous must be full or normal")
        self._conn = self._connect(path)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._conn.executescript(SCHEMA)
            have = {r["name"] for r in self._conn.execute("PRAGMA table_info(jobs)")}
            for name, decl in ADDED_COLUMNS.items():
                if name not in have:
                    self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
            self._conn.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at)")
        self._reader = self._connect(path)
        self._rlock = threading.Lock()

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        return conn

    def close(self) -> None:
        with self._lock, self._rlock:
            self._conn.close()
            self._reader.close()

    def _write(self, fn: Callable[[sqlite3.Connection], T], deadline: float | None = None) -> T:
        """Run `fn(conn)` in one IMMEDIATE transaction: committed, or rolled back on any error. With a `deadline`
        (time.monotonic()) it gives up with StoreBusy once the deadline passes before the transaction began, so
        nothing commits behind a caller that stopped waiting; a full disk raises StorageFull."""
        wait = -1.0 if deadline is None else deadline - time.monotonic()
        if deadline is not None and wait <= 0:
            raise StoreBusy("the jobs database did not answer in time")
        if not self._lock.acquire(timeout=wait):
            raise StoreBusy("the jobs database is busy")
        try:
            if deadline is not None:
                self._conn.execute(f"PRAGMA busy_timeout={int(max(0.0, deadline - time.monotonic()) * 1000)}")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._conn)
                    self._conn.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back by itself (a full disk does): ROLLBACK would then fail and hide
                    # the real error.
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                _raise_translated(exc)
            finally:
                if deadline is not None:
                    self._conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        finally:
            self._lock.release()
        return out

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """One write statement in its own transaction; the rows it changed."""
        return self._write(lambda conn: conn.execute(sql, args).rowcount)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._rlock:
            try:
                return fn(self._reader)
            except sqlite3.Error as exc:
                _raise_translated(exc)

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._read(lambda conn: conn.execute(sql, args).fetchall())

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        return self._read(lambda conn: conn.execute(sql, args).fetchone())

    # ---- submission ---------------------------------------------------------------------------------------
    def create(self, job: NewJob, max_active: int | None = None, quota: Quota | None = None,
               idempotency_key: str | None = None, deadline: float | None = None) -> CreateResult:
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

        return self._write(insert, deadline)

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
        self._exec("UPDATE idempotency SET created_at = ? WHERE key = ? AND job_id IS NULL", (time.time(), key))

    def release_idempotency_key(self, key: str) -> None:
        self._exec("DELETE FROM idempotency WHERE key = ? AND job_id IS NULL", (key,))

    def release_stale_reservations(self, older_than_s: float) -> int:
        return self._exec("DELETE FROM idempotency WHERE job_id IS NULL AND created_at < ?",
                          (time.time() - older_than_s,))

    # ---- removing ---------------------------------------------------------------------------------------
    def delete(self, job_id: str) -> bool:
        return self._exec("DELETE FROM jobs WHERE id = ? AND status IN (?, ?, ?)",
                          (job_id, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)) == 1

    def mark_files_expired(self, job_ids: list[str]) -> None:
        def mark(conn: sqlite3.Connection) -> None:
            for jid in job_ids:
                conn.execute("UPDATE jobs SET files_expired = 1 WHERE id = ?", (jid,))

        self._write(mark)

    # ---- running ------------------------------------------------------------------------------------------
    def claim(self, job_ids: list[str], worker: str, owner: str | None = None) -> list[JobRecord]:
        holder = owner or owner_id(worker)

        def take(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            now = time.time()
            taken = []
            for jid in job_ids:
                cur = conn.execute(
                    "UPDATE jobs SET status = ?, worker = ?, started_at = ?, attempts = attempts + 1, "
                    "lease_owner = ?, lease_expires = ?, cancel_requested = 0, not_before = NULL "
                    "WHERE id = ? AND status = ? AND (not_before IS NULL OR not_before <= ?)",
                    (JobStatus.PROCESSING, worker, now, holder, now + self.lease_s, jid, JobStatus.PENDING, now))
                if cur.rowcount:
                    taken.append(jid)
            return [conn.execute("SELECT * FROM jobs WHERE id = ?", (j,)).fetchone() for j in taken]

        return [_record(r) for r in self._write(take)]

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
        rows = self._all("SELECT id, lease_owner, lease_expires, attempts FROM jobs WHERE status = ?",
                         (JobStatus.PROCESSING,))
        now = time.time()
        lapsed = [r for r in rows if (r["lease_expires"] or 0) < now or holder_gone(r["lease_owner"])]
        if not lapsed:
            return []

        def give_back(conn: sqlite3.Connection) -> list[str]:
            back = []
            for r in lapsed:
                cur = conn.execute(
                    "UPDATE jobs SET status = ?, worker = NULL, lease_owner = NULL, lease_expires = NULL, "
                    "progress_step = 0, preview_step = 0 WHERE id = ? AND status = ? AND attempts = ? AND "
                    "lease_owner IS ?",
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
                    f"progress_step = 0, preview_step = 0 WHERE id = ? AND status = ? {guard}",
                    (JobStatus.PENDING, jid, JobStatus.PROCESSING, *args)).rowcount
            return n

        return self._write(give_back)

    def retry_later(self, claim: Claim, delay_s: float, failure: dict[str, Any]) -> bool:
        def give_back(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT retries FROM jobs WHERE id = ? AND status = ? AND lease_owner = ? AND "
                               "attempts = ?", (claim.job_id, JobStatus.PROCESSING, claim.owner,
                                                claim.attempt)).fetchone()
            if row is None:
                return False
            retries = [*(json.loads(row["retries"]) if row["retries"] else []), failure]
            conn.execute("UPDATE jobs SET status = ?, worker = NULL, lease_owner = NULL, lease_expires = NULL, "
                         "progress_step = 0, preview_step = 0, not_before = ?, retries = ? WHERE id = ?",
                         (JobStatus.PENDING, time.time() + delay_s, json.dumps(retries), claim.job_id))
            return True

        return self._write(give_back)

    def set_progress(self, job_id: str, step: int, total: int) -> bool:
        return self._best_effort("UPDATE jobs SET progress_step = ?, progress_total = ? WHERE id = ?",
                                 (step, total, job_id))

    def set_preview_step(self, job_id: str, step: int) -> bool:
        return self._best_effort("UPDATE jobs SET preview_step = ? WHERE id = ?", (step, job_id))

    def _best_effort(self, sql: str, args: tuple[Any, ...]) -> bool:
        """One write for people watching (progress, previews): it never waits on a busy database (nor fails a
        render); whether it was made."""
        if not self._lock.acquire(timeout=_PROGRESS_WAIT_S):
            return False
        try:
            self._conn.execute(f"PRAGMA busy_timeout={int(_PROGRESS_WAIT_S * 1000)}")
            try:
                self._conn.execute(sql, args)
                return True
            except sqlite3.Error:
                return False
            finally:
                self._conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        finally:
            self._lock.release()

    def set_batch(self, job_ids: list[str], batch: dict[str, Any]) -> None:
        def record(conn: sqlite3.Connection) -> None:
            for position, jid in enumerate(job_ids):
                conn.execute("UPDATE jobs SET batch = ? WHERE id = ?", (json.dumps({**batch, "position": position}),
                                                                        jid))

        self._write(record)

    def _finish(self, job_id: str, status: JobStatus, claim: Claim | None, result: dict[str, Any] | None = None,
                error: dict[str, Any] | None = None) -> bool:
        guard, args = ("AND lease_owner = ? AND attempts = ?", (claim.owner, claim.attempt)) if claim else ("", ())
        return self._exec(
            "UPDATE jobs SET status = ?, result = ?, error = ?, finished_at = ?, finishes = finishes + 1, "
            f"lease_owner = NULL, lease_expires = NULL WHERE id = ? AND status = ? {guard}",
            (status, _dump(result), _dump(error), time.time(), job_id, JobStatus.PROCESSING, *args)) == 1

    def cancel_if_pending(self, job_id: str) -> bool:
        return self._exec("UPDATE jobs SET status = ?, error = ?, finished_at = ?, finishes = finishes + 1 "
                          "WHERE id = ? AND status = ?",
                          (JobStatus.CANCELLED, json.dumps(CANCELLED_ERROR), time.time(), job_id,
                           JobStatus.PENDING)) == 1

    def request_cancel(self, job_id: str) -> bool:
        return self._exec("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?",
                          (job_id, JobStatus.PROCESSING)) == 1

    def shared_secret(self, name: str) -> str:
        def make(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)", (name, secrets.token_hex(32)))
            return str(conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()["value"])

        return self._write(make)

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
        rows = self._all("SELECT id, webhook FROM jobs WHERE webhook IS NOT NULL AND status IN (?, ?, ?)",
                         (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED))
        return [r["id"] for r in rows if owed(json.loads(r["webhook"]))]


def _raise_translated(exc: sqlite3.Error) -> NoReturn:
    """Raise SQLite's error as the store's: a full disk and a lock held too long get their own types."""
    if is_disk_full(exc):
        raise StorageFull("the jobs database") from exc
    if is_store_busy(exc):
        raise StoreBusy("the jobs database is locked by another process") from exc
    raise exc


def _dump(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value) if value is not None else None
