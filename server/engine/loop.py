"""The engine loop: per worker, schedule -> claim -> execute -> record, with plain data between steps."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from pipelines.base import ParamError, RenderCancelled
from pipelines.registry import family_class
from server.engine.policy import NeverFits, Placement
from server.engine.request import GenerationRequest
from server.engine.results import output_names, save_outputs
from server.engine.scheduler import Plan, Scheduler, WorkerView
from server.jobs.store import JobRecord, JobStatus, JobStore
from server.media.storage import OutputStore

if TYPE_CHECKING:
    # The worker module imports torch; the engine loop itself only passes workers around.
    from server.engine.worker import Rendered, Worker

log = logging.getLogger("darkroom.engine")


def _versions() -> dict[str, str]:
    return {pkg: version(pkg) for pkg in ("torch", "diffusers", "transformers")}


_GENERATION_FAILED = {"code": "generation_failed", "field": None,
                      "message": "the model failed while rendering this job; the server log has details for "}


def _device_fault(exc: BaseException) -> bool:
    """Whether `exc` poisoned the device (torch is imported only where workers are)."""
    from server.engine.worker import is_device_fault

    return is_device_fault(exc)


class Engine:
    """Runs pending jobs on the workers. Each worker has its own thread; the scheduler decides what it runs."""

    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        workers: Sequence[Worker],
        outputs: OutputStore,
        on_finished: Callable[[str], None],
        preload: Sequence[str] = (),
        wait_s: float = 1.0,
        step_timeout_s: float = 600.0,
        on_fault: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.workers = list(workers)
        self.outputs = outputs
        self.on_finished = on_finished
        self.preload = list(preload)
        # One condition guards scheduling: a worker plans and claims while holding it, so no job is planned twice.
        self._cond = threading.Condition()
        self._stopping = False
        self._versions = _versions()
        self.ready = threading.Event()
        self._preloaded = 0
        self.load_failures: dict[str, str] = {}
        self._cancel_requested: set[str] = set()
        self.wait_s = wait_s
        self.stats: Counter[str] = Counter()
        self.not_batched: Counter[str] = Counter()
        self.step_timeout_s = step_timeout_s
        self.on_fault = on_fault
        self._claiming = True
        # Set when a drain ran out of time: running jobs stop at their next step and go back to the queue.
        self._interrupt = threading.Event()

    def start(self) -> None:
        """Start one thread per worker."""
        for worker in self.workers:
            worker.thread = threading.Thread(target=self._run, args=(worker,), name=f"worker-{worker.name}",
                                             daemon=True)
            worker.thread.start()
        threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()

    def stop_claiming(self) -> None:
        """Finish what is running but start nothing new (drain); queued jobs stay on disk."""
        with self._cond:
            self._claiming = False
            self._cond.notify_all()

    def running(self) -> list[str]:
        """Ids of the jobs the healthy workers are rendering now."""
        return [jid for w in self.workers if not w.fault for jid in w.busy_with]

    def wait_idle(self, timeout: float) -> bool:
        """Block until no healthy worker is rendering (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def interrupt_running(self) -> None:
        """Stop running jobs at their next step boundary and re-queue them (the drain's time is up)."""
        self._interrupt.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the threads to stop after their current job and wait for them."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for worker in self.workers:
            # A worker taken out as hung may never return; its thread is a daemon and dies with the process.
            if worker.thread is not None and not worker.fault:
                worker.thread.join(timeout)

    def notify(self) -> None:
        """New work was queued."""
        with self._cond:
            self._cond.notify_all()

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending job now, or ask a running one to stop at its next step. False if already final."""
        if self.store.cancel_if_pending(job_id):
            self._done(job_id)
            return True
        record = self.store.get(job_id)
        if record is None or record.status is not JobStatus.PROCESSING:
            return False
        with self._cond:
            self._cancel_requested.add(job_id)
        return True

    # ---- worker thread -----------------------------------------------------------------
    def _run(self, worker: Worker) -> None:
        worker.queued = self.store.pending_by_weights
        self._warm(worker)
        while True:
            with self._cond:
                if self._stopping or worker.fault:
                    return
                if not self._claiming:
                    self._cond.wait(timeout=self.wait_s)
                    continue
                plan, jobs = self._claim_next(worker)
                if not jobs:
                    # The timeout also picks up work re-queued by another process, a missed notify, and
                    # batches that are gathering mates (max_wait_s).
                    self._cond.wait(timeout=self.wait_s)
                    continue
            assert plan is not None
            worker.beat = time.monotonic()
            worker.busy_with = tuple(j.id for j in jobs)
            try:
                self._execute_batch(worker, jobs, plan)
            finally:
                worker.busy_with = ()

    def _warm(self, worker: Worker) -> None:
        for weights in self.preload:
            try:
                worker.preload([weights])
            except Exception:  # noqa: BLE001 - a model that cannot load must not kill the worker; jobs report it
                log.exception("could not preload %s on %s", weights, worker.device)
                self.load_failures[weights] = f"{weights} could not be loaded on {worker.device}"
        with self._cond:
            self._preloaded += 1
            if self._preloaded == len(self.workers):
                self.ready.set()

    def _claim_next(self, worker: Worker) -> tuple[Plan | None, list[JobRecord]]:
        """Called with `_cond` held."""
        queue = self.store.pending()
        if not queue:
            return None, []
        view = WorkerView(name=worker.name, device=worker.device, state=worker.state())
        plan = self.scheduler.schedule(queue, view, time.time())
        if plan is None:
            return None, []
        return plan, self.store.claim(list(plan.job_ids), worker.name)

    def _execute_batch(self, worker: Worker, jobs: list[JobRecord], plan: Plan) -> None:
        """Run a planned batch: one shared pipeline call when the family can merge the requests, else in turn."""
        requests = [GenerationRequest.from_json(j.request) for j in jobs]
        fam = family_class(requests[0].family)
        shared = (len(jobs) > 1 and all(fam.can_merge(r.render_params()) for r in requests)
                  and len({r.negative_prompt for r in requests}) == 1)
        info = {"id": secrets.token_hex(6), "size": len(jobs), "shared_call": shared, "worker": worker.name,
                "not_batched": dict(plan.not_batched)}
        self.store.set_batch([j.id for j in jobs], info)
        with self._cond:
            self.stats["batches"] += 1
            self.stats["batched_jobs"] += len(jobs)
            self.stats["shared_calls"] += int(shared)
            self.not_batched.update(plan.not_batched)
        if shared:
            self._run_shared(worker, jobs, requests, info)
        else:
            for job, request in zip(jobs, requests, strict=True):
                self._execute(worker, job, request)

    def _run_shared(self, worker: Worker, jobs: list[JobRecord], requests: list[GenerationRequest],
                    info: dict[str, Any]) -> None:
        """Several requests in one pipeline call (prompts and seeds per image); split and retry on OOM."""
        merged = replace(requests[0], num_images=sum(r.num_images for r in requests),
                         seeds=tuple(s for r in requests for s in r.seeds),
                         prompts=tuple(p for r in requests for p in [r.prompt] * r.num_images))
        ids = {j.id for j in jobs}
        started = time.time()
        last = [0.0]

        def on_step(step: int, total: int) -> None:
            # One job of a shared call cannot leave it mid-way; the call stops only when every job cancelled.
            worker.beat = time.monotonic()
            if ids <= self._cancel_requested or self._interrupt.is_set():
                raise RenderCancelled(",".join(sorted(ids)))
            now = time.perf_counter()
            if step == total or now - last[0] >= 0.1:
                last[0] = now
                for jid in ids:
                    self.store.set_progress(jid, step, total)

        memory_before = worker.memory_allocated()
        outcome = "ok"
        try:
            rendered = worker.render(merged, on_step)
        except RenderCancelled:
            outcome = "interrupted" if self._interrupt.is_set() and not ids <= self._cancel_requested else "cancelled"
        except (ParamError, NeverFits):
            outcome = "alone"  # one request's problem: run them one by one so each gets its own answer
        except Exception as exc:  # noqa: BLE001 - classified below, outside the except block
            outcome = "oom" if type(exc).__name__ == "DeviceOutOfMemory" else (
                "fault" if _device_fault(exc) else "error")
            if outcome == "error":
                log.exception("shared batch %s failed on %s", info["id"], worker.device)
        if outcome == "alone":
            for job, request in zip(jobs, requests, strict=True):
                self._execute(worker, job, request)
            return
        if outcome == "oom":
            with self._cond:
                self.stats["oom_splits"] += 1
            log.warning("batch %s (%d jobs) ran out of memory on %s; splitting it (memory %d -> %d bytes)",
                        info["id"], len(jobs), worker.device, memory_before, worker.memory_allocated())
            half = len(jobs) // 2
            for part_jobs, part_requests in ((jobs[:half], requests[:half]), (jobs[half:], requests[half:])):
                self.store.set_batch([j.id for j in part_jobs], {**info, "id": secrets.token_hex(6),
                                                                 "size": len(part_jobs), "split_from": info["id"],
                                                                 "shared_call": len(part_jobs) > 1})
                if len(part_jobs) == 1:
                    self._execute(worker, part_jobs[0], part_requests[0])
                else:
                    self._run_shared(worker, part_jobs, part_requests, info)
            return
        if outcome == "fault":
            self._take_out(worker, [j.id for j in jobs], "device fault")
            return
        if outcome == "interrupted":
            self.store.requeue([j.id for j in jobs])
            return
        if outcome in ("cancelled", "error"):
            for job in jobs:
                if outcome == "cancelled":
                    self.store.mark_cancelled(job.id, job.attempts)
                else:
                    self.store.fail(job.id, _GENERATION_FAILED | {"message": _GENERATION_FAILED["message"] + job.id},
                                   job.attempts)
                self._done(job.id)
            worker.release_memory()
            return
        # Hand each job its own images, in request order.
        offset = 0
        for job, request in zip(jobs, requests, strict=True):
            part = replace(rendered, images=rendered.images[offset:offset + request.num_images])
            offset += request.num_images
            if job.id in self._cancel_requested:
                self.store.mark_cancelled(job.id, job.attempts)
            else:
                self._record(worker, job, request, part, started)
            self._done(job.id)

    def _execute(self, worker: Worker, job: JobRecord, request: GenerationRequest | None = None) -> None:
        request = request or GenerationRequest.from_json(job.request)
        started = time.time()
        last = [0.0]

        def on_step(step: int, total: int) -> None:
            worker.beat = time.monotonic()
            if job.id in self._cancel_requested or self._interrupt.is_set():
                raise RenderCancelled(job.id)
            now = time.perf_counter()
            # Progress is for humans polling: a write per 100 ms is plenty.
            if step == total or now - last[0] >= 0.1:
                last[0] = now
                self.store.set_progress(job.id, step, total)

        # Out of memory alone: retry with model offload, then group offload (only where a GPU is managed).
        ladder: list[Placement | None] = [None]
        if worker.budget is not None:
            ladder += [Placement.MODEL_OFFLOAD, Placement.GROUP_OFFLOAD]
        outcome = "error"
        error: dict[str, Any] | None = None
        for force in ladder:
            try:
                rendered = worker.render(request, on_step, force)
                outcome = "ok"
            except RenderCancelled:
                outcome = ("interrupted" if self._interrupt.is_set() and job.id not in self._cancel_requested
                           else "cancelled")
            except ParamError as exc:
                outcome, error = "param", {"code": "invalid_request", "message": exc.message, "field": exc.field}
            except NeverFits as exc:
                outcome, error = "param", {"code": "insufficient_vram", "field": None,
                                           "message": f"this job {exc}; lower the size or num_images"}
            except Exception as exc:  # noqa: BLE001 - any pipeline fault fails this job only; details go to the log
                outcome = "oom" if type(exc).__name__ == "DeviceOutOfMemory" else (
                    "fault" if _device_fault(exc) else "error")
                if outcome == "error":
                    log.exception("job %s failed on %s", job.id, worker.device)
            if outcome != "oom":
                break
            with self._cond:
                self.stats["oom_retries"] += 1
            log.warning("job %s ran out of memory on %s (%s); retrying with the next offload", job.id,
                        worker.device, force or "resident")
        if outcome == "fault":
            self._take_out(worker, [job.id], "device fault")
            return
        if outcome == "interrupted":
            self.store.requeue([job.id])
            log.info("job %s interrupted by shutdown; back in the queue", job.id)
            return
        if outcome == "ok":
            self._record(worker, job, request, rendered, started)
        elif outcome == "cancelled":
            self.store.mark_cancelled(job.id, job.attempts)
            log.info("job %s cancelled on %s", job.id, worker.device)
        elif outcome == "param":
            assert error is not None
            self.store.fail(job.id, error, job.attempts)
        elif outcome == "oom":
            self.store.fail(job.id, {"code": "out_of_memory", "field": None, "message": (
                f"{request.model_id} ran out of GPU memory even with offload; lower the size, num_images or "
                "num_frames")}, job.attempts)
        else:
            self.store.fail(job.id, _GENERATION_FAILED | {"message": _GENERATION_FAILED["message"] + job.id},
                                   job.attempts)
        if outcome in ("cancelled", "error", "oom"):
            worker.release_memory()
        self._done(job.id)

    def _record(self, worker: Worker, job: JobRecord, request: GenerationRequest, rendered: Rendered,
                started: float) -> None:
        """Write a finished job's outputs, then mark it completed (outputs first: a done job always has them)."""
        try:
            save_started = time.perf_counter()
            result: dict[str, Any] = save_outputs(self.outputs, request, rendered)
            save_s = time.perf_counter() - save_started
        except Exception:  # noqa: BLE001 - a full disk fails the job, not the worker
            log.exception("could not save the outputs of %s", job.id)
            self.store.fail(job.id, {"code": "storage_failed", "field": None,
                                     "message": "the outputs could not be written; the server log has details"},
                            job.attempts)
            return
        where = worker.located[request.weights]
        result |= {
            "timings": {
                "queued_s": round(started - job.created_at, 4),
                "load_s": round(rendered.load_s, 4),
                "pipeline_s": round(rendered.pipeline_s, 4),
                "save_s": round(save_s, 4),
            },
            "runtime": {
                "worker": worker.name,
                "device": worker.device,
                "dtype": str(worker.dtype).removeprefix("torch."),
                "weights": request.weights,
                "demo_weights": where.demo,
                "family": request.family,
                "placement": rendered.placement,
                "versions": self._versions,
            },
        }
        if not self.store.complete(job.id, result, job.attempts):
            # The job was re-queued behind this worker's back (watchdog, device fault): another claim owns it now.
            log.warning("discarding a late result for %s (attempt %d is no longer current)", job.id, job.attempts)
            self.outputs.remove(output_names(result))

    def _done(self, job_id: str) -> None:
        with self._cond:
            self._cancel_requested.discard(job_id)
        record = self.store.get(job_id)
        if record is not None:
            took = (record.finished_at or time.time()) - (record.started_at or record.created_at)
            error = f" ({record.error['code']})" if record.error else ""
            log.info("finished %s %s: %s%s in %.2f s (%.2f s since accepted)", job_id, record.model, record.status,
                     error, took, (record.finished_at or time.time()) - record.created_at)
        self.on_finished(job_id)

    def _take_out(self, worker: Worker, job_ids: list[str], reason: str) -> None:
        """The device is poisoned or the worker hung: stop using it and give its jobs back to the queue."""
        with self._cond:
            if worker.fault:
                return
            worker.fault = f"{worker.device}: {reason}; taken out of service"
        requeued = self.store.requeue(job_ids)
        log.error("%s: %s; worker %s taken out, %d job(s) re-queued", worker.device, reason, worker.name, requeued)
        with self._cond:
            self.stats["device_faults" if reason == "device fault" else "hung_workers"] += 1
            self._cond.notify_all()
        self.on_fault(worker.fault)

    def _watchdog(self) -> None:
        """Take out a worker whose render made no step for `step_timeout_s` (a hung kernel or a deadlock).

        A Python thread cannot be killed: its jobs are re-queued (a late answer is discarded by the attempt guard)
        and `on_fault` asks for a restart of the process, the only way to get the device back.
        """
        check_s = min(5.0, self.step_timeout_s / 4)
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._cond.wait(timeout=check_s)
            now = time.monotonic()
            for worker in self.workers:
                busy = worker.busy_with
                if busy and not worker.fault and now - worker.beat > self.step_timeout_s:
                    self._take_out(worker, list(busy), f"no progress for {self.step_timeout_s:g} s (hung)")
