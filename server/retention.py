"""Output retention: finished tasks' files (outputs and stored inputs) expire after `retention_hours`, like hosted
providers' signed URLs, and under an optional size cap the oldest tasks' files go first. Uploaded files expire on
their own record's clock.

An expired output leaves a tombstone, so its URL answers 410 `expired` rather than 404, and the task record is marked
so its view says so. Pending and running tasks are never touched: their inputs are still needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from server.engine.results import output_names
from server.jobs.store import JobRecord, JobStore
from server.media.storage import InputStore, OutputStore
from server.media.uploads import UploadStore

log = logging.getLogger("darkroom.retention")

_PAGE = 200
_TOMBSTONE_S = 30 * 86400.0


def files_expire_at(record: JobRecord, retention_s: float | None) -> float | None:
    """When a task's files expire (None: it has not finished, or retention is off)."""
    if not retention_s or record.finished_at is None:
        return None
    return record.finished_at + retention_s


@dataclass(frozen=True)
class SweepResult:
    """What one sweep removed."""

    tasks: int
    files_bytes: int
    uploads: int


class Sweeper:
    """Removes expired files: by age, then by the size cap on outputs plus inputs (oldest finished tasks
    first)."""

    def __init__(self, store: JobStore, outputs: OutputStore, inputs: InputStore, uploads: UploadStore,
                 retention_s: float | None, max_bytes: int | None) -> None:
        self.store = store
        self.outputs = outputs
        self.inputs = inputs
        self.uploads = uploads
        self.retention_s = retention_s
        self.max_bytes = max_bytes

    def sweep(self, now: float | None = None) -> SweepResult:
        """One pass; safe to run while the server serves (files are removed one by one, finals only)."""
        now = time.time() if now is None else now
        tasks = freed = 0
        if self.retention_s:
            while batch := self.store.expire_candidates(now - self.retention_s, _PAGE):
                tasks += len(batch)
                freed += self._expire(batch)
                if len(batch) < _PAGE:
                    break
        if self.max_bytes is not None:
            over = self.outputs.total_bytes() + self.inputs.total_bytes() - self.max_bytes
            while over > 0 and (batch := self.store.expire_candidates(now + 1.0, 1)):
                gone = self._expire(batch)
                tasks += 1
                freed += gone
                over -= gone
        uploads = self.uploads.sweep()
        # An expired URL answers 410 for a month, then 404 like any unknown name (tombstones do not pile up).
        self.outputs.forget_expired(now - _TOMBSTONE_S)
        if tasks or uploads:
            log.info("retention: expired the files of %d task(s) (%.1f MB) and %d upload(s)", tasks, freed / 1e6,
                     uploads)
        return SweepResult(tasks, freed, uploads)

    def _expire(self, records: list[JobRecord]) -> int:
        freed = 0
        for record in records:
            if record.result:
                freed += self.outputs.expire(output_names(record.result))
            freed += self.inputs.discard(record.id)
        # Marked after the files are gone: a crash in between leaves the record to be swept again, harmlessly.
        self.store.mark_files_expired([r.id for r in records])
        return freed

    async def run(self, interval_s: float) -> None:
        """Sweep every `interval_s` until cancelled (off the event loop: it touches the disk)."""
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # one failed sweep must not stop the next
                log.exception("retention sweep failed; trying again in %.0f s", interval_s)
            await asyncio.sleep(interval_s)
