"""One pipeline call and every way it can end: the engine's single outcome path (`_run_call`), shared by solo
and merged calls. Reading a call's inputs is inside it, so a job whose inputs cannot be read fails or is retried
alone; a shared call that runs out of memory is split, a solo one retried with offload; a request's own failure
in a shared call is re-run alone so each job gets its own answer.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pipelines.base import RenderCancelled
from pipelines.previews import PreviewOptions
from server.engine.gang_scheduling import GangScheduling
from server.engine.policy import Placement, split_after_oom
from server.engine.recording import Recorder
from server.engine.slots import Call, WorkerSlot
from server.engine.work import (
    Cancelled,
    Completed,
    DeviceFault,
    Failed,
    NotSpread,
    Outcome,
    OutOfMemory,
    RankLost,
    RenderWork,
    WorkerLost,
)
from server.faults import InputMissing
from server.jobs.store import Claim, JobStore
from server.logs import event
from server.media.storage import InputStore, PreviewStore

log = logging.getLogger("darkroom.engine")

_GENERATION_FAILED = {"code": "generation_failed", "field": None,
                      "message": "the model failed while rendering this job; the server log has details for "}
_OFFLOAD_LADDER = (Placement.MODEL_OFFLOAD, Placement.GROUP_OFFLOAD)


class CallOutcomes:
    """The engine's handling of one call (mixed into `Engine`, whose state it uses)."""

    store: JobStore
    inputs: InputStore
    previews: PreviewStore
    preview_options: PreviewOptions
    recorder: Recorder
    stats: Counter[str]
    _cond: threading.Condition
    _cancel_requested: set[str]
    _interrupt: threading.Event
    gangs: GangScheduling

    def _take_out(self, slot: WorkerSlot, job_ids: list[str], reason: str, claims: list[Claim],
                  restart: bool = True) -> None:
        raise NotImplementedError

    def _note_batch(self, job_ids: list[str], info: dict[str, Any]) -> None:
        raise NotImplementedError

    def _work(self, call: Call, force: Placement | None, held: frozenset[str] = frozenset()) -> RenderWork:
        """The render for a call: one request as it is, or several merged (prompts, seeds, inputs and LoRAs per
        image). LoRA files go along unless the worker holds them converted (`held`)."""
        first = call.requests[0]
        params = first.params
        if len(call.requests) > 1:
            params = replace(params, num_images=sum(r.params.num_images for r in call.requests),
                             seeds=tuple(s for r in call.requests for s in r.params.seeds),
                             prompts=tuple(p for r in call.requests for p in [r.params.prompt] * r.params.num_images),
                             negative_prompts=tuple(n for r in call.requests
                                                    for n in [r.params.negative_prompt] * r.params.num_images),
                             loras=(),
                             image_loras=tuple(r.params.loras for r in call.requests
                                               for _ in range(r.params.num_images)))
        read = self.inputs.read
        # A merged call's inputs are per image; one request's serve all of its images.
        per_image = [(r, n) for r in call.requests for n in range(r.params.num_images)] if len(call.requests) > 1 \
            else [(first, 0)]
        return RenderWork(
            weights=first.weights, family=first.family, params=params,
            sources=tuple(read(p) for r, _ in per_image for p in r.source_paths),
            references=tuple(read(p) for r, _ in per_image for p in r.reference_paths),
            masks=tuple(read(r.mask_path) for r, _ in per_image if r.mask_path),
            force=force, demand=self.store.pending_by_weights(),
            adapters=self._adapter_files({u.sha256 for r in call.requests for u in r.params.loras} - held),
            previews=self.preview_options if any(r.previews for r in call.requests) else None)

    def _adapter_files(self, wanted: set[str]) -> dict[str, bytes]:
        files = {}
        for sha in sorted(wanted):
            data = self.hooks.adapter_bytes(sha)
            if data is None:
                raise InputMissing(f"LoRA {sha[:12]} is no longer in the library (deleted, or its storage is "
                                   "unreachable)")
            files[sha] = data
        return files

    def _on_step(self, slot: WorkerSlot, ids: set[str]) -> Callable[[int, int], None]:
        last = [0.0]

        def on_step(step: int, total: int) -> None:
            # A job of a shared call cannot leave it mid-way: the call stops when every job in it is cancelled.
            slot.beat = time.monotonic()
            if ids <= self._cancel_requested or self._interrupt.is_set():
                raise RenderCancelled(",".join(sorted(ids)))
            now = time.perf_counter()
            if step == total or now - last[0] >= 0.1:  # progress is for humans polling: 10 writes/s is plenty
                last[0] = now
                for jid in ids:
                    with contextlib.suppress(Exception):  # progress is best effort: it never fails a render
                        self.store.set_progress(jid, step, total)

        return on_step

    def _on_preview(self, call: Call) -> Callable[[int, int, tuple[bytes, ...]], None]:
        """Where a call's previews go: each job that asked gets its first image's, in the preview store, and the
        step on its record (what the streams watch)."""
        firsts: dict[str, int] = {}
        index = 0
        for job, request in zip(call.jobs, call.requests, strict=True):
            if request.previews:
                firsts[job.id] = index
            index += request.params.num_images

        def on_preview(step: int, _total: int, jpegs: tuple[bytes, ...]) -> None:
            for jid, first in firsts.items():
                if first < len(jpegs) and jpegs[first]:
                    try:
                        self.previews.put(jid, jpegs[first])
                        self.store.set_preview_step(jid, step)
                    except Exception:  # previews are best effort: a full disk or busy store never fails a render
                        log.debug("preview of %s at step %d not stored", jid, step, exc_info=True)

        return on_preview

    def _drop_previews(self, call: Call) -> None:
        for job, request in zip(call.jobs, call.requests, strict=True):
            if request.previews:
                with contextlib.suppress(Exception):
                    self.previews.remove(job.id)

    def _run_call(self, slot: WorkerSlot, call: Call, info: dict[str, Any], force: Placement | None = None) -> None:
        """One pipeline call and everything that can follow from it: the one outcome path. Reading the inputs is
        inside it, so a job whose inputs cannot be read fails (or is retried) alone."""
        claims = {j.id: Claim.of(j) for j in call.jobs}
        try:
            work = self._work(call, force, slot.handle.adapters_held())
        except Exception as exc:  # noqa: BLE001 - classified per job: retried, waiting or failed with its code
            for job in call.jobs:
                self.recorder.fault(job, claims[job.id], exc)
            return
        started = time.time()
        memory_before = slot.handle.memory_allocated()
        try:
            outcome: Outcome = slot.handle.render(work, self._on_step(slot, call.ids), self._on_preview(call))
        except Exception as exc:  # the interface says a render never raises; if one does, it failed
            log.exception("render of %s raised instead of returning an outcome", ", ".join(sorted(call.ids)))
            outcome = Failed(f"{type(exc).__name__}: {exc}")
        if work.previews is not None:
            self._drop_previews(call)
        match outcome:
            case Completed():
                self._completed(call, outcome, started, claims)
            case Cancelled():
                self._cancelled(call, claims)
            case DeviceFault():
                self._take_out(slot, list(call.ids), "device fault", list(claims.values()))
            case WorkerLost(detail=detail):
                # The process is fine; only that worker is gone (a Ray actor or its node): no restart.
                self._take_out(slot, list(call.ids), f"worker lost ({detail})", list(claims.values()), restart=False)
            case RankLost(detail=detail):
                self._rank_lost(call, detail, claims)
            case NotSpread(detail=detail):
                log.info("%s declined %s (%s); it runs on one device", slot.name, ", ".join(sorted(call.ids)), detail)
                self.gangs.decline(list(call.ids))
                self.store.requeue(list(call.ids), list(claims.values()))
            case OutOfMemory() if len(call.jobs) > 1:
                self._split_after_oom(slot, call, info, memory_before)
            case OutOfMemory():
                self._offload_after_oom(slot, call, info, force, claims[call.jobs[0].id])
            case Failed(error=error) if error is not None and len(call.jobs) > 1:
                # One request's own problem: run them one by one so each gets its own answer.
                for job, request in zip(call.jobs, call.requests, strict=True):
                    self._run_call(slot, Call((job,), (request,)), info)
            case Failed(error=error):
                for job in call.jobs:
                    self.recorder.fail(job.id, error or _GENERATION_FAILED | {
                        "message": _GENERATION_FAILED["message"] + job.id}, claims[job.id])

    def _rank_lost(self, call: Call, detail: str, claims: dict[str, Claim]) -> None:
        """A gang lost a rank (its devices are free again): each job goes back to the queue once, like a job whose
        worker was lost; a second loss fails it."""
        with self._cond:
            self.stats["gang_rank_losses"] += 1
        for job in call.jobs:
            if any(r.get("code") == "gang_rank_lost" for r in job.retries or []):
                self.recorder.fail(job.id, {"code": "worker_lost", "field": None, "message": (
                    "the GPUs running this job failed twice; send it again, and if it keeps failing tell the "
                    "server's operator (the server log names the device)")}, claims[job.id])
                continue
            self.store.retry_later(claims[job.id], 0.0, {"attempt": job.attempts, "code": "gang_rank_lost",
                                                         "message": detail, "at": round(time.time(), 3)})
            event(log, "job.requeued", f"{job.id}: a rank of its gang was lost ({detail}); back in the queue",
                  job_id=job.id, model=job.model, reason="gang_rank_lost")

    def _completed(self, call: Call, outcome: Completed, started: float, claims: dict[str, Claim]) -> None:
        offset = 0
        for job, request in zip(call.jobs, call.requests, strict=True):
            n = request.params.num_images
            part = replace(outcome, images=outcome.images[offset:offset + n],
                           videos=outcome.videos[offset:offset + n] if outcome.videos else [])
            offset += n
            if job.id in self._cancel_requested:
                self.recorder.cancelled(job.id, claims[job.id])
            else:
                self.recorder.save_later(job, request, part, started, claims[job.id])

    def _cancelled(self, call: Call, claims: dict[str, Claim]) -> None:
        if self._interrupt.is_set() and not call.ids <= self._cancel_requested:
            self.store.requeue(list(call.ids), list(claims.values()))
            for job in call.jobs:
                event(log, "job.requeued", f"{job.id} stopped at a step boundary by the shutdown; back in the queue",
                      job_id=job.id, model=job.model, reason="shutdown")
            return
        for job in call.jobs:
            self.recorder.cancelled(job.id, claims[job.id])

    def _split_after_oom(self, slot: WorkerSlot, call: Call, info: dict[str, Any], memory_before: int) -> None:
        with self._cond:
            self.stats["oom_splits"] += 1
        log.warning("batch %s (%d jobs) ran out of memory on %s; splitting it (memory %d -> %d bytes)",
                    info["id"], len(call.jobs), slot.device, memory_before, slot.handle.memory_allocated())
        half, _rest = split_after_oom(len(call.jobs))
        for part in (slice(0, half), slice(half, None)):
            sub = Call(call.jobs[part], call.requests[part])
            self._note_batch([j.id for j in sub.jobs], {**info, "id": secrets.token_hex(6), "size": len(sub.jobs),
                                                        "split_from": info["id"], "shared_call": len(sub.jobs) > 1})
            self._run_call(slot, sub, info)

    def _offload_after_oom(self, slot: WorkerSlot, call: Call, info: dict[str, Any], force: Placement | None,
                           claim: Claim) -> None:
        rung = _OFFLOAD_LADDER.index(force) + 1 if force in _OFFLOAD_LADDER else 0
        if slot.handle.budget is not None and rung < len(_OFFLOAD_LADDER):
            with self._cond:
                self.stats["oom_retries"] += 1
            log.warning("job %s ran out of memory on %s (%s); retrying with %s", call.jobs[0].id, slot.device,
                        force or "resident", _OFFLOAD_LADDER[rung])
            self._run_call(slot, call, info, _OFFLOAD_LADDER[rung])
            return
        self.recorder.fail(call.jobs[0].id, {"code": "out_of_memory", "field": None, "message": (
            f"{call.requests[0].model_id} ran out of GPU memory even with offload; lower the size, num_images "
            "or num_frames")}, claim)
