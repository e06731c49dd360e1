"""The scheduling seam: plain data in (queue, workers), a plan out. No tensors, no I/O.

The first policy is deliberately simple — oldest job first, batched with later
jobs of the same model and batch key. The VRAM-aware policy replaces it behind
the same `Scheduler` protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from server.jobs.store import QueuedJob


@dataclass(frozen=True)
class WorkerView:
    """What the scheduler knows of a worker: its name, device and which weights it holds."""

    name: str
    device: str
    loaded: frozenset[str]


@dataclass(frozen=True)
class Plan:
    """Run these jobs (same model and batch key) as one batch on `worker`."""

    worker: str
    job_ids: tuple[str, ...]
    model: str


class Scheduler(Protocol):
    """Decides which queued jobs go to which idle worker."""

    def schedule(self, queue: Sequence[QueuedJob], idle: Sequence[WorkerView]) -> list[Plan]:
        """At most one plan per idle worker; every job id at most once."""
        ...


class OldestFirstGrouped:
    """Oldest pending job first, together with later jobs of the same model and batch key."""

    def __init__(self, max_batch: int = 1) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch

    def schedule(self, queue: Sequence[QueuedJob], idle: Sequence[WorkerView]) -> list[Plan]:
        taken: set[str] = set()
        plans: list[Plan] = []
        ordered = sorted(queue, key=lambda j: (j.created_at, j.id))
        for worker in idle:
            head = next((j for j in ordered if j.id not in taken), None)
            if head is None:
                break
            batch = [j.id for j in ordered
                     if j.id not in taken and j.model == head.model and j.batch_key == head.batch_key]
            batch = batch[: self.max_batch]
            taken.update(batch)
            plans.append(Plan(worker=worker.name, job_ids=tuple(batch), model=head.model))
        return plans
