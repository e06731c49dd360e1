"""How jobs end, written to the job store: completed (outputs stored off the device's thread, then `complete`),
failed, cancelled, and faults around a render (retried after a backoff, waiting for storage, or failed with the
fault's code). Every final transition goes through `Recorder`, so each is logged once and its waiters are told
once, whatever the store does meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from server.engine.recovery import FaultPolicy, StorageGate
from server.engine.request import GenerationRequest
from server.engine.results import output_names, save_outputs
from server.engine.saving import Savers
from server.engine.work import Completed
from server.faults import classify
from server.jobs.store import Claim, JobRecord, JobStore
from server.logs import event
from server.media.storage import OutputStore

log = logging.getLogger("darkroom.engine")


class Recorder:
    """Writes each job's end to the store and tells whoever waits for it."""

    def __init__(self, store: JobStore, outputs: OutputStore, savers: Savers, gate: StorageGate, faults: FaultPolicy,
                 count: Callable[[str], None], on_final: Callable[[str], None],
                 observe: Callable[[JobRecord], None]) -> None:
        self.store = store
        self.outputs = outputs
        self.savers = savers
        self.gate = gate
        self.faults = faults
        self.count = count
        """Adds one to an engine counter (metrics)."""
        self.on_final = on_final
        """Called once per job that reached a final state, whatever happened to its record."""
        self.observe = observe

    def fail(self, job_id: str, error: dict[str, Any], claim: Claim) -> None:
        """processing -> failed with a client-safe error."""
        self.store.fail(job_id, error, claim)
        self.done(job_id)

    def cancelled(self, job_id: str, claim: Claim) -> None:
        """processing -> cancelled (stopped on request)."""
        self.store.mark_cancelled(job_id, claim)
        self.done(job_id)

    def fault(self, job: JobRecord, claim: Claim, exc: BaseException) -> None:
        """A failure around `job`'s render (preparing or storing it): it waits (storage full: nothing is spent),
        is tried again after a backoff, or, past its attempts, fails with the fault's code."""
        fault = classify(exc)
        if fault.environmental:
            log.error("job %s: %s (%s); back in the queue until storage is writable", job.id, fault.code, exc,
                      extra={"job_id": job.id})
            self.gate.close(fault)
            self.count("parked_for_storage")
            self.store.requeue([job.id], [claim])
            return
        failures = len(job.retries or []) + 1
        if failures < self.faults.max_attempts and not job.request.get("no_retry"):
            delay = self.faults.delay(failures)
            log.warning("job %s: %s (%s: %s); trying again in %.1f s (failure %d of %d)", job.id, fault.code,
                        type(exc).__name__, exc, delay, failures, self.faults.max_attempts, extra={"job_id": job.id})
            self.count("job_retries")
            self.store.retry_later(claim, delay, {"attempt": job.attempts, "code": fault.code,
                                                  "message": fault.message, "at": round(time.time(), 3)})
            return
        log.error("job %s: %s (%s: %s); failed after %d attempts", job.id, fault.code, type(exc).__name__, exc,
                  failures, extra={"job_id": job.id})
        self.fail(job.id, fault.error(attempts=failures), claim)

    def save_later(self, job: JobRecord, request: GenerationRequest, done: Completed, started: float,
                   claim: Claim) -> None:
        """Hand a rendered job to the savers (waiting while their backlog is full)."""
        self.savers.submit(job.id, claim, lambda: self._store(job, request, done, started, claim))

    def _store(self, job: JobRecord, request: GenerationRequest, done: Completed, started: float,
               claim: Claim) -> None:
        """Write a finished job's outputs, then mark it completed (outputs first: a done job always has them)."""
        try:
            save_started = time.perf_counter()
            result: dict[str, Any] = save_outputs(self.outputs, request, done.images, done.videos)
            save_s = time.perf_counter() - save_started
        except Exception as exc:  # noqa: BLE001 - a full disk or a failing bucket: the job waits or is retried
            log.warning("could not store the outputs of %s: %s: %s", job.id, type(exc).__name__, exc)
            self.fault(job, claim, exc)
            return
        result |= {
            "timings": {"queued_s": round(started - job.created_at, 4), "load_s": round(done.load_s, 4),
                        "pipeline_s": round(done.pipeline_s, 4), "save_s": round(save_s, 4)},
            "runtime": done.runtime,
        }
        try:
            completed = self._patiently(lambda: self.store.complete(job.id, result, claim))
        except Exception:
            self.outputs.remove(output_names(result))  # the job runs again when its lease lapses
            raise
        if not completed:
            # The lease lapsed behind this worker's back (watchdog, device fault, a slow renewal): another
            # claim owns the job now.
            log.warning("discarding a late result for %s (attempt %d is no longer current)", job.id, claim.attempt)
            self.outputs.remove(output_names(result))
            return
        self.done(job.id)

    def _patiently(self, write: Callable[[], bool]) -> bool:
        """A final write, tried again while the store is briefly busy (for most of a lease): the outputs are
        already stored, so finishing the job beats rendering it again."""
        deadline = time.monotonic() + self.store.lease_s * 0.8
        attempt = 0
        while True:
            attempt += 1
            try:
                return write()
            except Exception:  # tried again until the deadline, then raised
                pause = self.faults.delay(attempt) / 4
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)

    def done(self, job_id: str) -> None:
        """A job reached its final state: log it, count it and tell the waiters (always, even when its record
        cannot be read back now)."""
        try:
            record = self.store.get(job_id)
            if record is not None:
                end = record.finished_at or time.time()
                took, total = end - (record.started_at or record.created_at), end - record.created_at
                code = record.error["code"] if record.error else None
                event(log, f"job.{record.status}", f"finished {job_id} {record.model}: {record.status}"
                      f"{f' ({code})' if code else ''} in {took:.2f} s ({total:.2f} s since accepted)",
                      logging.WARNING if code and record.status == "failed" else logging.INFO, job_id=job_id,
                      model=record.model, status=str(record.status), code=code, run_s=round(took, 3),
                      total_s=round(total, 3), attempts=record.attempts, key=record.owner)
                self.observe(record)
        except Exception:  # noqa: BLE001 - the record is final; only its log line and metrics are missed
            log.warning("finished %s, but could not read it back for the log and metrics", job_id)
        finally:
            self.on_final(job_id)
