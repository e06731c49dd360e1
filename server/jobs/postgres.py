"""The job store on PostgreSQL (psycopg 3): several front ends and engines sharing one queue.

Claims use `SELECT … FOR UPDATE SKIP LOCKED`, so two engines asking for the same jobs never wait on each other
and never both get one. The queue bound and a key's daily quota are checked inside the insert's transaction
under a transaction-scoped advisory lock, so concurrent submits through different front ends cannot overshoot
them. Connections come from a pool that checks each one before use, so a restarted PostgreSQL costs the
statements in flight at that moment (retried once on a fresh connection), not the server.

`engine_lock` is a session advisory lock on a dedicated connection: with the Ray backend, the front end holding it
runs the one engine (scheduler) that drives the cluster's workers.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from server.faults import StorageFull, StoreBusy, is_disk_full, is_store_busy
from server.jobs.leases import holder_gone, owner_id
from server.jobs.postgres_reads import _FINAL, PostgresReads, _record
from server.jobs.store import (
    CANCELLED_ERROR,
    Claim,
    CreateResult,
    EngineLock,
    JobRecord,
    JobStatus,
    JobStore,
    NewJob,
    Quota,
    Refusal,
    ReservationLost,
    owed,
)

log = logging.getLogger("darkroom.store")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    status           TEXT NOT NULL,
    model            TEXT NOT NULL,
    batch_key        TEXT NOT NULL,
    request          JSONB NOT NULL,
    result           JSONB,
    error            JSONB,
    progress_step    INTEGER NOT NULL DEFAULT 0,
    progress_total   INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    worker           TEXT,
    created_at       DOUBLE PRECISION NOT NULL,
    started_at       DOUBLE PRECISION,
    finished_at      DOUBLE PRECISION,
    weights          TEXT NOT NULL DEFAULT '',
    priority         INTEGER NOT NULL DEFAULT 0,
    activation_bytes BIGINT NOT NULL DEFAULT 0,
    estimate         JSONB,
    batch            JSONB,
    webhook          JSONB,
    dialect          JSONB,
    finishes         INTEGER NOT NULL DEFAULT 0,
    owner            TEXT,
    lease_owner      TEXT,
    lease_expires    DOUBLE PRECISION,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    files_expired    BOOLEAN NOT NULL DEFAULT FALSE
);
-- Added after the first release; a database created before them gets them here.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS not_before DOUBLE PRECISION;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS retries JSONB;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS preview_step INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at);
CREATE TABLE IF NOT EXISTS idempotency (
    key        TEXT PRIMARY KEY,
    body_sha   TEXT NOT NULL,
    job_id     TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
_PROGRESS_WAIT_S = 0.25
# Advisory lock keys (any two bigints unlikely to collide with another application's on the same database).
_SUBMIT_LOCK = 0x6461726B_726F6F6D  # "darkroom"
_ENGINE_LOCK = 0x6461726B_656E6731  # "darkeng1"
_SCHEMA_LOCK = 0x6461726B_73636831  # "darksch1"


class PostgresJobStore(PostgresReads, JobStore):
    """Jobs in a PostgreSQL database named by a `postgresql://` URL."""

    def __init__(self, url: str, lease_s: float = 30.0, pool_size: int = 8, connect_timeout_s: float = 10.0) -> None:
        self.lease_s = lease_s
        self.url = url
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout_s,
                                    kwargs={"autocommit": True, "row_factory": dict_row},
                                    check=ConnectionPool.check_connection, name="darkroom-jobs")
        self._pool.open(wait=True, timeout=connect_timeout_s)
        self._run(self._create_schema)

    @staticmethod
    def _create_schema(cur: psycopg.Cursor[dict[str, Any]]) -> None:
        # `CREATE TABLE IF NOT EXISTS` is not safe against itself: two front ends starting together can both pass
        # the check and one fails on the catalog's unique index. The lock makes the second wait for the first.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        cur.execute(SCHEMA)

    def close(self) -> None:
        self._pool.close()

    def _run(self, fn: Callable[[psycopg.Cursor[dict[str, Any]]], T], deadline: float | None = None) -> T:
        """Run `fn(cursor)` in one transaction; once more on a fresh connection when the server went away (a
        restart) before it committed. With a `deadline` (time.monotonic()) the wait for a connection and for
        locks is bounded by it (StoreBusy, nothing committed); a full disk raises StorageFull."""
        if deadline is not None and deadline <= time.monotonic():
            raise StoreBusy("the jobs database did not answer in time")
        try:
            for attempt in (1, 2):
                left = None if deadline is None else max(0.001, deadline - time.monotonic())
                try:
                    with self._pool.connection(timeout=left) as conn, conn.transaction(), conn.cursor() as cur:
                        if left is not None:
                            # Both apply to this transaction only.
                            cur.execute(f"SET LOCAL lock_timeout = {int(left * 1000)}")
                            cur.execute(f"SET LOCAL statement_timeout = {int(left * 1000)}")
                        return fn(cur)
                except psycopg.OperationalError as exc:
                    if attempt == 2 or is_store_busy(exc) or is_disk_full(exc):
                        raise
                    log.warning("the job database connection dropped; retrying on a fresh one")
                    self._pool.check()
        except (psycopg.Error, PoolTimeout) as exc:
            if is_disk_full(exc):
                raise StorageFull("the jobs database") from exc
            if is_store_busy(exc):
                raise StoreBusy("the jobs database is busy") from exc
            raise
        raise AssertionError("unreachable")

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        def q(cur: psycopg.Cursor[dict[str, Any]]) -> list[dict[str, Any]]:
            cur.execute(sql, args)
            return cur.fetchall()

        return self._run(q)

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def _count(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        def q(cur: psycopg.Cursor[dict[str, Any]]) -> int:
            cur.execute(sql, args)
            return cur.rowcount

        return self._run(q)

    # ---- submission ---------------------------------------------------------------------------------------
    def create(self, job: NewJob, max_active: int | None = None, quota: Quota | None = None,
               idempotency_key: str | None = None, deadline: float | None = None) -> CreateResult:
        def insert(cur: psycopg.Cursor[dict[str, Any]]) -> CreateResult:
            now = time.time()
            if max_active is not None or (quota is not None and job.owner is not None):
                # Serialises bounded inserts across front ends for the rest of this transaction only.
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SUBMIT_LOCK,))
            if max_active is not None:
                cur.execute("SELECT COUNT(*) AS n FROM jobs WHERE status IN (%s, %s)",
                            (JobStatus.PENDING.value, JobStatus.PROCESSING.value))
                if cur.fetchone()["n"] >= max_active:  # type: ignore[index]
                    return CreateResult(Refusal.QUEUE_FULL)
            if quota is not None and job.owner is not None:
                cur.execute("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM jobs WHERE owner = %s AND "
                            "created_at >= %s", (job.owner, now - quota.window_s))
                row = cur.fetchone()
                assert row is not None
                if row["n"] >= quota.jobs:
                    return CreateResult(Refusal.QUOTA_EXCEEDED, (row["oldest"] or now) + quota.window_s - now)
            cur.execute(
                "INSERT INTO jobs (id, status, model, batch_key, request, created_at, weights, priority, "
                "activation_bytes, estimate, owner, webhook, dialect) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (job.id, JobStatus.PENDING.value, job.model, job.batch_key, Jsonb(job.request), now, job.weights,
                 job.priority, job.activation_bytes, _json(job.estimate), job.owner, _json(job.webhook),
                 _json(job.dialect)))
            if idempotency_key is not None:
                cur.execute("UPDATE idempotency SET job_id = %s WHERE key = %s AND job_id IS NULL",
                            (job.id, idempotency_key))
                if not cur.rowcount:
                    raise ReservationLost(idempotency_key)  # rolls the insert back
            return CreateResult()

        return self._run(insert, deadline)

    def reserve_idempotency_key(self, key: str, body_sha: str, stale_after_s: float) -> tuple[bool, str | None, str]:
        def reserve(cur: psycopg.Cursor[dict[str, Any]]) -> tuple[bool, str | None, str]:
            now = time.time()
            # created_at is when the reservation was last touched (see touch_idempotency_key).
            cur.execute("DELETE FROM idempotency WHERE key = %s AND job_id IS NULL AND created_at < %s",
                        (key, now - stale_after_s))
            cur.execute("INSERT INTO idempotency (key, body_sha, job_id, created_at) VALUES (%s, %s, NULL, %s) "
                        "ON CONFLICT (key) DO NOTHING", (key, body_sha, now))
            if cur.rowcount:
                return True, None, body_sha
            cur.execute("SELECT body_sha, job_id FROM idempotency WHERE key = %s", (key,))
            row = cur.fetchone()
            assert row is not None
            return False, row["job_id"], row["body_sha"]

        return self._run(reserve)

    def touch_idempotency_key(self, key: str) -> None:
        self._count("UPDATE idempotency SET created_at = %s WHERE key = %s AND job_id IS NULL", (time.time(), key))

    def release_idempotency_key(self, key: str) -> None:
        self._count("DELETE FROM idempotency WHERE key = %s AND job_id IS NULL", (key,))

    def release_stale_reservations(self, older_than_s: float) -> int:
        return self._count("DELETE FROM idempotency WHERE job_id IS NULL AND created_at < %s",
                           (time.time() - older_than_s,))

    # ---- removing ---------------------------------------------------------------------------------------
    def delete(self, job_id: str) -> bool:
        return self._count("DELETE FROM jobs WHERE id = %s AND status IN (%s, %s, %s)", (job_id, *_FINAL)) == 1

    def mark_files_expired(self, job_ids: list[str]) -> None:
        self._count("UPDATE jobs SET files_expired = TRUE WHERE id = ANY(%s)", (job_ids,))

    # ---- running ------------------------------------------------------------------------------------------
    def claim(self, job_ids: list[str], worker: str, owner: str | None = None) -> list[JobRecord]:
        holder = owner or owner_id(worker)

        def take(cur: psycopg.Cursor[dict[str, Any]]) -> list[dict[str, Any]]:
            now = time.time()
            # Rows another engine is claiming right now are skipped, not waited for: it gets them.
            cur.execute("SELECT id FROM jobs WHERE id = ANY(%s) AND status = %s AND (not_before IS NULL OR "
                        "not_before <= %s) ORDER BY created_at, id FOR UPDATE SKIP LOCKED",
                        (job_ids, JobStatus.PENDING.value, now))
            ids = [r["id"] for r in cur.fetchall()]
            if not ids:
                return []
            cur.execute("UPDATE jobs SET status = %s, worker = %s, started_at = %s, attempts = attempts + 1, "
                        "lease_owner = %s, lease_expires = %s, cancel_requested = FALSE, not_before = NULL WHERE id = ANY(%s) "
                        "RETURNING *", (JobStatus.PROCESSING.value, worker, now, holder, now + self.lease_s, ids))
            rows = {r["id"]: r for r in cur.fetchall()}
            return [rows[i] for i in ids]

        return [_record(r) for r in self._run(take)]

    def renew(self, claims: list[Claim]) -> set[str]:
        if not claims:
            return set()

        def extend(cur: psycopg.Cursor[dict[str, Any]]) -> set[str]:
            until = time.time() + self.lease_s
            cancel = set()
            for c in claims:
                cur.execute("UPDATE jobs SET lease_expires = %s WHERE id = %s AND status = %s AND lease_owner = %s "
                            "AND attempts = %s", (until, c.job_id, JobStatus.PROCESSING.value, c.owner, c.attempt))
                cur.execute("SELECT cancel_requested FROM jobs WHERE id = %s", (c.job_id,))
                row = cur.fetchone()
                if row is not None and row["cancel_requested"]:
                    cancel.add(c.job_id)
            return cancel

        return self._run(extend)

    def requeue_expired(self) -> list[str]:
        rows = self._all("SELECT id, lease_owner, lease_expires, attempts FROM jobs WHERE status = %s",
                         (JobStatus.PROCESSING.value,))
        now = time.time()
        lapsed = [r for r in rows if (r["lease_expires"] or 0) < now or holder_gone(r["lease_owner"])]
        if not lapsed:
            return []

        def give_back(cur: psycopg.Cursor[dict[str, Any]]) -> list[str]:
            back = []
            for r in lapsed:
                cur.execute(
                    "UPDATE jobs SET status = %s, worker = NULL, lease_owner = NULL, lease_expires = NULL, "
                    "progress_step = 0, preview_step = 0 WHERE id = %s AND status = %s AND attempts = %s AND "
                    "lease_owner IS NOT DISTINCT FROM %s",
                    (JobStatus.PENDING.value, r["id"], JobStatus.PROCESSING.value, r["attempts"], r["lease_owner"]))
                if cur.rowcount:
                    back.append(r["id"])
            return back

        return self._run(give_back)

    def requeue(self, job_ids: list[str], claims: list[Claim] | None = None) -> int:
        held = {c.job_id: c for c in claims or []}

        def give_back(cur: psycopg.Cursor[dict[str, Any]]) -> int:
            n = 0
            for jid in job_ids:
                guard, args = ("AND lease_owner = %s AND attempts = %s", (held[jid].owner, held[jid].attempt)) \
                    if jid in held else ("", ())
                cur.execute("UPDATE jobs SET status = %s, worker = NULL, lease_owner = NULL, lease_expires = NULL, "
                            f"progress_step = 0, preview_step = 0 WHERE id = %s AND status = %s {guard}",
                            (JobStatus.PENDING.value, jid, JobStatus.PROCESSING.value, *args))
                n += cur.rowcount
            return n

        return self._run(give_back)

    def retry_later(self, claim: Claim, delay_s: float, failure: dict[str, Any]) -> bool:
        return self._count(
            "UPDATE jobs SET status = %s, worker = NULL, lease_owner = NULL, lease_expires = NULL, progress_step = 0, "
            "preview_step = 0, not_before = %s, retries = COALESCE(retries, '[]'::jsonb) || %s WHERE id = %s AND status = %s AND "
            "lease_owner = %s AND attempts = %s",
            (JobStatus.PENDING.value, time.time() + delay_s, Jsonb([failure]), claim.job_id,
             JobStatus.PROCESSING.value, claim.owner, claim.attempt)) == 1

    def set_progress(self, job_id: str, step: int, total: int) -> bool:
        return self._best_effort("UPDATE jobs SET progress_step = %s, progress_total = %s WHERE id = %s",
                                 (step, total, job_id))

    def set_preview_step(self, job_id: str, step: int) -> bool:
        return self._best_effort("UPDATE jobs SET preview_step = %s WHERE id = %s", (step, job_id))

    def _best_effort(self, sql: str, args: tuple[Any, ...]) -> bool:
        """One write for people watching (progress, previews): it never waits on a busy database (nor fails a
        render); whether it was made."""
        def write(cur: psycopg.Cursor[dict[str, Any]]) -> None:
            cur.execute(sql, args)

        try:
            self._run(write, time.monotonic() + _PROGRESS_WAIT_S)
            return True
        except (StoreBusy, StorageFull, psycopg.Error):
            return False

    def set_batch(self, job_ids: list[str], batch: dict[str, Any]) -> None:
        def record(cur: psycopg.Cursor[dict[str, Any]]) -> None:
            for position, jid in enumerate(job_ids):
                cur.execute("UPDATE jobs SET batch = %s WHERE id = %s", (Jsonb({**batch, "position": position}), jid))

        self._run(record)

    def _finish(self, job_id: str, status: JobStatus, claim: Claim | None, result: dict[str, Any] | None = None,
                error: dict[str, Any] | None = None) -> bool:
        guard, args = ("AND lease_owner = %s AND attempts = %s", (claim.owner, claim.attempt)) if claim else ("", ())
        return self._count(
            "UPDATE jobs SET status = %s, result = %s, error = %s, finished_at = %s, finishes = finishes + 1, "
            f"lease_owner = NULL, lease_expires = NULL WHERE id = %s AND status = %s {guard}",
            (status.value, _json(result), _json(error), time.time(), job_id, JobStatus.PROCESSING.value, *args)) == 1

    def cancel_if_pending(self, job_id: str) -> bool:
        return self._count("UPDATE jobs SET status = %s, error = %s, finished_at = %s, finishes = finishes + 1 "
                           "WHERE id = %s AND status = %s", (JobStatus.CANCELLED.value, Jsonb(CANCELLED_ERROR),
                                                             time.time(), job_id, JobStatus.PENDING.value)) == 1

    def request_cancel(self, job_id: str) -> bool:
        return self._count("UPDATE jobs SET cancel_requested = TRUE WHERE id = %s AND status = %s",
                           (job_id, JobStatus.PROCESSING.value)) == 1

    # ---- webhooks -----------------------------------------------------------------------------------------
    def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any], delivered: str | None) -> None:
        def record(cur: psycopg.Cursor[dict[str, Any]]) -> None:
            cur.execute("SELECT webhook FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
            row = cur.fetchone()
            if row is not None and row["webhook"]:
                hook = row["webhook"]
                hook["attempts"].append(attempt)
                if delivered and delivered not in hook["delivered"]:
                    hook["delivered"].append(delivered)
                cur.execute("UPDATE jobs SET webhook = %s WHERE id = %s", (Jsonb(hook), job_id))

        self._run(record)

    def owed_webhooks(self) -> list[str]:
        rows = self._all("SELECT id, webhook FROM jobs WHERE webhook IS NOT NULL AND status IN (%s, %s, %s)", _FINAL)
        return [r["id"] for r in rows if owed(r["webhook"])]

    def shared_secret(self, name: str) -> str:
        def make(cur: psycopg.Cursor[dict[str, Any]]) -> str:
            cur.execute("INSERT INTO secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                        (name, secrets.token_hex(32)))
            cur.execute("SELECT value FROM secrets WHERE name = %s", (name,))
            row = cur.fetchone()
            assert row is not None
            return str(row["value"])

        return self._run(make)

    # ---- the cluster's one engine -------------------------------------------------------------------------
    def engine_lock(self) -> EngineLock:
        return _AdvisoryEngineLock(self.url)


class _AdvisoryEngineLock(EngineLock):
    """A session advisory lock held on its own connection: released by PostgreSQL when that session ends (the
    holder died, or lost its connection), so another front end can take over."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._guard = threading.Lock()

    def try_acquire(self) -> bool:
        with self._guard:
            if self._conn is not None:
                return self._alive()
            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except psycopg.OperationalError:
                return False
            (got,) = conn.execute("SELECT pg_try_advisory_lock(%s)", (_ENGINE_LOCK,)).fetchone()  # type: ignore
            if got:
                self._conn = conn
                return True
            conn.close()
            return False

    def held(self) -> bool:
        with self._guard:
            return self._conn is not None and self._alive()

    def _alive(self) -> bool:
        assert self._conn is not None
        try:
            self._conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            self._conn.close()
            self._conn = None
            return False

    def release(self) -> None:
        with self._guard:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _json(value: dict[str, Any] | None) -> Jsonb | None:
    return Jsonb(value) if value is not None else None
