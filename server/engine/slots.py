"""The engine's bookkeeping per worker and per pipeline call (plain data; the loop in loop.py drives them)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from server.engine.request import GenerationRequest
from server.engine.worker_handle import WorkerHandle
from server.jobs.store import Claim, JobRecord


@dataclass
class WorkerSlot:
    """The engine's side of one worker: the handle, its thread, its lease owner id and what it is doing."""

    handle: WorkerHandle
    owner: str
    thread: threading.Thread | None = None
    busy_with: tuple[str, ...] = ()
    claims: list[Claim] = field(default_factory=list)
    fault: str | None = None
    """Set when the device failed in a way that poisons it, or the worker hung; the engine stops using it."""
    held_by: str | None = None
    """The gang whose job uses this worker's device now (the worker claims nothing meanwhile)."""
    beat: float = 0.0
    """Monotonic time of the last sign of life while rendering (claim, each step); read by the watchdog."""

    @property
    def name(self) -> str:
        """The worker's name."""
        return self.handle.name

    @property
    def device(self) -> str:
        """The worker's device."""
        return self.handle.device

    @property
    def alive(self) -> bool:
        """Whether its thread runs."""
        return bool(self.thread and self.thread.is_alive())

    def snapshot(self) -> dict[str, Any]:
        """The handle's view plus the engine's: fault and the batch it runs."""
        return {**self.handle.snapshot(), "fault": self.fault, "current_batch": list(self.busy_with)}


@dataclass(frozen=True)
class Call:
    """Jobs rendered by one pipeline call, with their requests and claims."""

    jobs: tuple[JobRecord, ...]
    requests: tuple[GenerationRequest, ...]

    @property
    def ids(self) -> set[str]:
        return {j.id for j in self.jobs}
