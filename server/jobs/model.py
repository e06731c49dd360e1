"""The job store's plain data: statuses, records, what the scheduler sees, claims and submission results."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar


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
    """One job as stored."""

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
    owner: str | None = None
    """Name of the API key that submitted the job (None when auth is off)."""
    lease_owner: str | None = None
    lease_expires: float | None = None
    cancel_requested: bool = False
    files_expired: bool = False
    """The job's outputs and inputs were removed by the retention sweeper (their URLs answer 410)."""
    not_before: float | None = None
    """A job given back after a failure around its render is not claimed before this (epoch seconds)."""
    retries: list[dict[str, Any]] | None = None
    """The failures that gave it back, oldest first (code, message, attempt, when)."""
    preview_step: int = 0
    """The denoising step of the job's latest live preview (0: none yet); the picture is in the preview store."""


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

    COLUMNS: ClassVar[str] = "id, model, batch_key, created_at, weights, priority, activation_bytes"
    """The columns `from_row` reads, for the stores' SELECT."""

    @classmethod
    def from_row(cls, row: Any) -> QueuedJob:
        """From a row of the jobs table (a psycopg dict row or a sqlite3.Row: both index by column name)."""
        return cls(row["id"], row["model"], row["batch_key"], row["created_at"], row["weights"], row["priority"],
                   row["activation_bytes"])


@dataclass(frozen=True)
class Claim:
    """Proof of holding a running job: the lease owner and the claim's attempt number. A final transition or a
    renewal is accepted only with the current claim, so a holder whose lease expired (and whose job another
    worker took) cannot finish it a second time."""

    job_id: str
    owner: str
    attempt: int

    @classmethod
    def of(cls, record: JobRecord) -> Claim:
        """The claim a freshly claimed record carries."""
        assert record.lease_owner is not None
        return cls(record.id, record.lease_owner, record.attempts)


@dataclass(frozen=True)
class NewJob:
    """A job to insert, with what must be committed in the same transaction (webhook, dialect note)."""

    id: str
    model: str
    batch_key: str
    request: dict[str, Any]
    weights: str = ""
    priority: int = 0
    activation_bytes: int = 0
    estimate: dict[str, Any] | None = None
    owner: str | None = None
    webhook: dict[str, Any] | None = None
    dialect: dict[str, Any] | None = None


class Refusal(StrEnum):
    """Why a submission was not inserted."""

    QUEUE_FULL = "queue_full"
    QUOTA_EXCEEDED = "quota_exceeded"


@dataclass(frozen=True)
class Quota:
    """At most `jobs` per `window_s` for the submitting key, counted inside the insert's transaction."""

    jobs: int
    window_s: float = 86400.0


@dataclass(frozen=True)
class CreateResult:
    """The outcome of an insert: accepted, or refused with the reason and when to retry."""

    refused: Refusal | None = None
    retry_after_s: float = 0.0

    def __bool__(self) -> bool:
        return self.refused is None


def new_task_id() -> str:
    """`task_<ms>_<random>`, the hosted platform's shape; 64 random bits make it unguessable."""
    return f"task_{int(time.time() * 1000)}_{secrets.token_hex(8)}"
