"""The job store interface: everything the server does with jobs goes through `JobStore`.

Implementations: `server/jobs/sqlite.py` (one machine, the default) and `server/jobs/postgres.py` (several front
ends and engines sharing one queue). The contract that makes sharing safe:

* a job row is committed (with its webhook, dialect note, queue bound and quota checked in the same
  transaction) before the client hears "accepted";
* `claim` hands each pending job to one owner with a lease that the holder renews; an expired lease (or a holder
  known dead) goes back to the queue with `requeue_expired`;
* final transitions (`complete`, `fail`, `mark_cancelled`) and renewals are accepted only with the current
  `Claim`, so a late answer from a former holder is discarded and no job ever finishes twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from server.jobs.model import (
    FINAL_STATES,
    Claim,
    CreateResult,
    JobRecord,
    JobStatus,
    NewJob,
    QueuedJob,
    Quota,
    Refusal,
    new_task_id,
)

__all__ = ["FINAL_STATES", "Claim", "CreateResult", "EngineLock", "JobRecord", "JobStatus", "JobStore", "NewJob",
           "QueuedJob", "Quota", "Refusal", "new_task_id"]

CANCELLED_ERROR = {"code": "cancelled", "message": "the task was cancelled on request", "field": None}


class ReservationLost(Exception):
    """The Idempotency-Key reservation a job was to be bound to was taken over and bound to another job."""


class JobStore(ABC):
    """All job state. Safe to call from the event loop and from worker threads."""

    lease_s: float
    """How long a claim lasts without renewal."""

    # ---- submission ---------------------------------------------------------------------------------------
    @abstractmethod
    def create(self, job: NewJob, max_active: int | None = None, quota: Quota | None = None,
               idempotency_key: str | None = None, deadline: float | None = None) -> CreateResult:
        """Insert a pending job; returns only after it is committed. In the same transaction: refused when
        `max_active` jobs are pending or processing, or when the job's owner reached `quota`; the reserved
        `idempotency_key` is bound to the job, and when that reservation is no longer unbound (it went stale and
        another request took the key and committed its job first) nothing is inserted and ReservationLost is raised,
        so a key never makes two jobs. With a `deadline` (time.monotonic()), a store that cannot begin the insert
        before it raises StoreBusy and commits nothing; a full disk raises StorageFull."""

    @abstractmethod
    def reserve_idempotency_key(self, key: str, body_sha: str, stale_after_s: float) -> tuple[bool, str | None, str]:
        """Claim `key` for a body hashing to `body_sha`: (new, bound job id or None, the first body's hash). An
        unbound reservation not touched for `stale_after_s` belongs to a request that died mid-accept (its process
        was killed): it is taken over."""

    @abstractmethod
    def touch_idempotency_key(self, key: str) -> None:
        """Mark an unbound reservation as still being accepted (its request is alive)."""

    @abstractmethod
    def release_idempotency_key(self, key: str) -> None:
        """Free a reserved key whose request was refused before a job was committed."""

    @abstractmethod
    def release_stale_reservations(self, older_than_s: float) -> int:
        """Free reservations whose request died before committing a job (a crash mid-accept)."""

    # ---- reading ------------------------------------------------------------------------------------------
    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None for an unknown id."""

    @abstractmethod
    def pending(self, limit: int = 1000) -> list[QueuedJob]:
        """Pending jobs, oldest first."""

    @abstractmethod
    def pending_by_weights(self) -> dict[str, int]:
        """Pending jobs per weights name."""

    @abstractmethod
    def queue_position(self, job_id: str) -> int | None:
        """0-based position among pending jobs, or None when the job is not pending."""

    @abstractmethod
    def list_jobs(self, owner: str | None, limit: int, before: tuple[float, str] | None = None,
                  model: str | None = None, status: JobStatus | None = None) -> list[JobRecord]:
        """`owner`'s jobs (all jobs when auth is off: owner None), newest first, strictly older than the
        (created_at, id) cursor `before`, optionally of one model and status."""

    @abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove a finished job's row (its files are the caller's to remove first); False when it is not final."""

    @abstractmethod
    def expire_candidates(self, finished_before: float, limit: int = 500) -> list[JobRecord]:
        """Finished jobs whose files are still kept and that finished before `finished_before`, oldest first."""

    @abstractmethod
    def mark_files_expired(self, job_ids: list[str]) -> None:
        """Record that these jobs' files were removed."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Jobs per status."""

    @abstractmethod
    def active_count(self) -> int:
        """Jobs accepted and not finished."""

    @abstractmethod
    def jobs_since(self, owner: str, since: float) -> tuple[int, float]:
        """(jobs `owner` submitted since `since`, the oldest one's creation time)."""

    # ---- running ------------------------------------------------------------------------------------------
    @abstractmethod
    def claim(self, job_ids: list[str], worker: str, owner: str | None = None) -> list[JobRecord]:
        """Move the still-pending ones of `job_ids` to processing under a lease held by `owner` (default: this
        process's id for `worker`); their records carry the claim."""

    @abstractmethod
    def renew(self, claims: list[Claim]) -> set[str]:
        """Extend the leases of `claims` that are still current; returns the ids among them whose cancellation
        was requested (possibly through another front end)."""

    @abstractmethod
    def requeue_expired(self) -> list[str]:
        """Put processing jobs whose lease expired, or whose holder is known dead, back to pending."""

    @abstractmethod
    def requeue(self, job_ids: list[str], claims: list[Claim] | None = None) -> int:
        """Give running jobs back to the queue (their worker was taken out, or a drain ran out of time); with
        `claims`, only those still held by them."""

    @abstractmethod
    def retry_later(self, claim: Claim, delay_s: float, failure: dict[str, Any]) -> bool:
        """Give a running job back to the queue after a failure around its render (its input could not be read,
        its outputs not stored): claimable again after `delay_s`, with `failure` appended to its `retries`. Only
        while `claim` is current; whether it happened."""

    @abstractmethod
    def set_progress(self, job_id: str, step: int, total: int) -> bool:
        """Denoising progress of a running job. Best effort: never waits on a busy store and never raises for
        one; False when the write was skipped."""

    @abstractmethod
    def set_preview_step(self, job_id: str, step: int) -> bool:
        """The step of a running job's latest live preview (its picture is in the preview store). Best effort, as
        `set_progress`."""

    @abstractmethod
    def set_batch(self, job_ids: list[str], batch: dict[str, Any]) -> None:
        """Record which batch ran each job (its position in it added)."""

    def complete(self, job_id: str, result: dict[str, Any], claim: Claim | None = None) -> bool:
        """processing -> completed (outputs are already stored); False when `claim` is no longer current."""
        return self._finish(job_id, JobStatus.COMPLETED, claim, result=result)

    def fail(self, job_id: str, error: dict[str, Any], claim: Claim | None = None) -> bool:
        """processing -> failed with a client-safe error; False when `claim` is no longer current."""
        return self._finish(job_id, JobStatus.FAILED, claim, error=error)

    def mark_cancelled(self, job_id: str, claim: Claim | None = None) -> bool:
        """processing -> cancelled (stopped at a step boundary on request)."""
        return self._finish(job_id, JobStatus.CANCELLED, claim, error=CANCELLED_ERROR)

    @abstractmethod
    def _finish(self, job_id: str, status: JobStatus, claim: Claim | None, result: dict[str, Any] | None = None,
                error: dict[str, Any] | None = None) -> bool:
        """The one final transition: processing -> `status`, counted in `finishes`, only while `claim` (when
        given) is the job's current lease; whether it happened."""

    @abstractmethod
    def cancel_if_pending(self, job_id: str) -> bool:
        """pending -> cancelled; False when it is not pending (any more)."""

    @abstractmethod
    def request_cancel(self, job_id: str) -> bool:
        """Flag a processing job for cancellation (its holder sees the flag when it renews); False when it is
        not processing."""

    # ---- webhooks -----------------------------------------------------------------------------------------
    @abstractmethod
    def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any], delivered: str | None) -> None:
        """Record one delivery attempt (and, when it succeeded, the event as delivered)."""

    @abstractmethod
    def owed_webhooks(self) -> list[str]:
        """Finished jobs whose completion webhook was never delivered."""

    @abstractmethod
    def shared_secret(self, name: str) -> str:
        """A random secret that every process using this store shares (URL signing): made by the first to ask,
        the same for all after."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def engine_lock(self) -> EngineLock:
        """Who runs the engine that drives shared (cluster) workers: one holder at a time across every process
        on this store. A store that only one machine uses hands out a lock that is always held."""
        return _AlwaysHeld()


class EngineLock(ABC):
    """The right to run the engine for workers every front end shares (the Ray backend's actors)."""

    @abstractmethod
    def try_acquire(self) -> bool:
        """Take the lock if free (or already ours); whether we hold it now."""

    @abstractmethod
    def held(self) -> bool:
        """Whether we still hold it (False once its session was lost)."""

    @abstractmethod
    def release(self) -> None:
        """Give it up."""


class _AlwaysHeld(EngineLock):
    def try_acquire(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        pass


def owed(hook: dict[str, Any], max_attempts: int = 50) -> bool:
    """Whether a finished job's completion webhook is still owed (shared by the implementations)."""
    return "completed" in hook["events"] and "completed" not in hook["delivered"] and \
        len(hook["attempts"]) < max_attempts
