"""What the HTTP dialects ask of accepted jobs: read, list, wait for, cancel and delete them, read their inputs,
and hold their idempotency keys. Every store call goes off the event loop with a deadline (OffLoop), so a busy
store answers 503 store_busy instead of stalling every request.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from server.engine.completion import CompletionHub
from server.engine.results import output_names
from server.faults import StoreBusy
from server.jobs.offloop import OffLoop
from server.jobs.store import FINAL_STATES, JobRecord, JobStatus, JobStore
from server.jobs.view import JobView
from server.media.storage import InputStore, OutputStore

if TYPE_CHECKING:
    from server.engine.loop import Engine

_STORE_POLL_S = 1.0


class JobReports:
    """Reads and changes accepted jobs on behalf of a client key."""

    def __init__(self, store: JobStore, engine: Engine, inputs: InputStore, outputs: OutputStore,
                 hub: CompletionHub, calls: OffLoop | None = None) -> None:
        self.store = store
        self.engine = engine
        self.inputs = inputs
        self.outputs = outputs
        self.hub = hub
        self.calls = calls or OffLoop()
        """Every store call made from the event loop goes through here (threads of its own, a deadline)."""

    async def get(self, job_id: str, caller: str | None = None) -> JobRecord | None:
        """The job, or None for an id this server never issued and for another key's job: a task is visible only
        to the key that created it (jobs made with auth off are everyone's)."""
        record = await self.calls(self.store.get, job_id)
        return record if record is not None and record.owner in (None, caller) else None

    async def list(self, caller: str | None, limit: int, before: tuple[float, str] | None = None,
                   model: str | None = None, status: JobStatus | None = None) -> list[JobRecord]:
        """`caller`'s tasks, newest first (see JobStore.list_jobs)."""
        return await self.calls(self.store.list_jobs, caller, limit, before, model, status)

    async def delete(self, job_id: str) -> bool:
        """Remove a finished job with its outputs and inputs; False when it is still pending or running."""
        record = await self.calls(self.store.get, job_id)
        if record is None or record.status not in FINAL_STATES:
            return False
        if record.result:
            await asyncio.to_thread(self.outputs.remove, output_names(record.result))
        await asyncio.to_thread(self.inputs.discard, job_id)
        return await self.calls(self.store.delete, job_id)

    async def input_bytes(self, record: JobRecord, name: str) -> bytes | None:
        """One of a job's stored inputs by file name (`source-0.png`...), or None."""
        ref = next((r for _role, r in JobView.of(record).inputs() if r.rsplit("/", 1)[-1] == name), None)
        if ref is None:
            return None
        try:
            return await asyncio.to_thread(self.inputs.read, ref)
        except OSError:
            return None

    async def queue_position(self, job_id: str) -> int | None:
        """0-based position among pending jobs (None once it runs or finished, or while the store is busy: it is
        shown beside answers that must not fail for it, such as an accepted submission's)."""
        try:
            return await self.calls(self.store.queue_position, job_id)
        except StoreBusy:
            return None

    async def cancel(self, job_id: str) -> bool:
        """Cancel a pending job, or stop a running one at its next step; False when it had already finished."""
        return await self.calls(self.engine.cancel, job_id)

    async def job_counts(self) -> dict[str, int]:
        """Jobs per status."""
        return await self.calls(self.store.counts)

    async def queue_by_weights(self) -> dict[str, int]:
        """Pending jobs per weights name."""
        return await self.calls(self.store.pending_by_weights)

    def visible_to(self, who: str | None, job_ids: list[str]) -> list[str]:
        """Of `job_ids`, those `who`'s key may see (its own; jobs made with auth off are everyone's). Blocking:
        it reads the store; call it off the event loop."""
        return [i for i in job_ids if (r := self.store.get(i)) is not None and r.owner in (None, who)]

    # ---- idempotency keys (server/api/idempotency.py) --------------------------------------------
    async def reserve_key(self, key: str, body_sha: str, stale_after_s: float) -> tuple[bool, str | None, str]:
        """See JobStore.reserve_idempotency_key."""
        return await self.calls(self.store.reserve_idempotency_key, key, body_sha, stale_after_s)

    async def touch_key(self, key: str) -> None:
        """See JobStore.touch_idempotency_key."""
        await self.calls(self.store.touch_idempotency_key, key)

    async def release_key(self, key: str) -> None:
        """See JobStore.release_idempotency_key."""
        await self.calls(self.store.release_idempotency_key, key)

    async def wait(self, job_id: str, timeout: float) -> JobRecord:
        """Wait until the job is final or `timeout` passes; returns its latest record."""
        event = self.hub.register(job_id)
        deadline = time.monotonic() + timeout
        try:
            # The hub wakes us when this process's engine finishes the job; the store is read every second too,
            # for jobs another process runs (a shared store: the engine may live in another front end).
            while (left := deadline - time.monotonic()) > 0:
                record = await self._peek(job_id)
                if record is not None and record.status in FINAL_STATES:
                    break
                try:
                    await asyncio.wait_for(event.wait(), min(left, _STORE_POLL_S))
                    break
                except TimeoutError:
                    continue
        finally:
            self.hub.unregister(job_id, event)
        # The job is accepted: a store busy for a moment must not turn this answer into an error.
        record = await self.calls(self.store.get, job_id, deadline_s=self.calls.deadline_s * 3)
        assert record is not None
        return record

    async def _peek(self, job_id: str) -> JobRecord | None:
        """The job as stored now, or None while the store is busy (a waiter just looks again later)."""
        try:
            return await self.calls(self.store.get, job_id)
        except StoreBusy:
            return None
