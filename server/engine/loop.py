"""The engine loop: per worker, schedule -> claim -> render -> record, with plain data between the steps.

Every way a render ends is a typed `Outcome` from the worker interface, and one path (`_run_call`) handles the
outcomes of solo and shared calls alike; reading a job's inputs is inside that path, and how each job ends is
written by the `Recorder` (recording.py), so a failure around a render (an input gone, the store locked, the disk
full) ends, retries or parks that job and never the worker thread. Jobs are held under leases that the
supervision thread (supervision.py) renews; it also puts lapsed leases back in the queue (another process's crash,
say), takes out hung workers and restarts worker threads that died.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from pipelines.base import RenderCancelled, RenderParams
from pipelines.memory import MemoryCoefficients
from pipelines.registry import family_class
from server.engine.admission import Admission, admit
from server.engine.costs import Costs
from server.engine.policy import Placement, split_after_oom
from server.engine.recording import Recorder
from server.engine.recovery import FaultPolicy, RoundFailures, StorageGate
from server.engine.request import GenerationRequest
from server.engine.saving import Savers
from server.engine.scheduler import Plan, Scheduler, WorkerView
from server.engine.slots import Call, WorkerSlot
from server.engine.supervision import Supervision
from server.engine.work import Cancelled, Completed, DeviceFault, Failed, Outcome, OutOfMemory, RenderWork, WorkerLost
from server.engine.worker_handle import WorkerHandle
from server.jobs.leases import owner_id
from server.jobs.store import Claim, JobRecord, JobStore
from server.logs import event
from server.media.storage import InputStore, OutputStore

log = logging.getLogger("darkroom.engine")

_GENERATION_FAILED = {"code": "generation_failed", "field": None,
                      "message": "the model failed while rendering this job; the server log has details for "}
_OFFLOAD_LADDER = (Placement.MODEL_OFFLOAD, Placement.GROUP_OFFLOAD)


class Engine:
    """Runs pending jobs on the workers. Each worker has its own thread; the scheduler decides what it runs."""

    def __init__(self, store: JobStore, scheduler: Scheduler, workers: Sequence[WorkerHandle], outputs: OutputStore,
                 inputs: InputStore, on_finished: Callable[[str], None], costs: Costs, preload: Sequence[str] = (),
                 wait_s: float = 1.0, step_timeout_s: float = 600.0,
                 on_fault: Callable[[str], None] = lambda _reason: None, reap_every_s: float = 2.0,
                 memory: Mapping[str, MemoryCoefficients] | None = None,
                 observe: Callable[[JobRecord], None] = lambda _record: None,
                 observe_batch: Callable[[str, int], None] = lambda _model, _size: None,
                 save_threads: int = 2, faults: FaultPolicy | None = None,
                 storage_probe: Callable[[], None] | None = None) -> None:
        self.store = store
        self.memory = memory or {}
        self.observe = observe
        """Called with each job's final record (metrics)."""
        self.observe_batch = observe_batch
        """Called with (model, jobs) as each batch starts (metrics)."""
        self.scheduler = scheduler
        self.slots = [WorkerSlot(w, owner_id(w.name)) for w in workers]
        self.outputs = outputs
        self.inputs = inputs
        self.on_finished = on_finished
        self.costs = costs
        self.preload = list(preload)
        # One condition guards scheduling: a worker plans and claims while holding it, so no job is planned twice.
        self._cond = threading.Condition()
        self._stopping = False
        self.ready = threading.Event()
        self._preloaded = 0
        self.load_failures: dict[str, str] = {}
        self._cancel_requested: set[str] = set()
        self.wait_s = wait_s
        self.stats: Counter[str] = Counter()
        self.not_batched: Counter[str] = Counter()
        self.step_timeout_s = step_timeout_s
        self.reap_every_s = reap_every_s
        self.on_fault = on_fault
        self._claiming = True
        self.started = False
        """Whether this process runs the engine (with the Ray backend only the front end holding the engine lock
        does; the others take requests and show the workers)."""
        # Set when a drain ran out of time: running jobs stop at their next step and go back to the queue.
        self._interrupt = threading.Event()
        # Finished renders are stored off the device's thread, so the next call starts at once; their leases stay
        # renewed (they count as running) until stored.
        self._savers = Savers(save_threads)
        self.faults = faults = faults or FaultPolicy()
        self.storage = StorageGate(storage_probe, faults)
        """Closed while storage is full: nothing new starts, accepted jobs wait."""
        self.recorder = Recorder(store, outputs, self._savers, self.storage, faults, self._count, self._finalised,
                                 observe)
        self._supervision = Supervision(self)
        self._round_failures = RoundFailures("an engine round")

    # ---- control -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start one thread per worker and the supervision thread."""
        with self._cond:
            self.started = True
            for slot in self.slots:
                self._start_slot(slot)
        threading.Thread(target=self._supervision.run, name="engine-supervision", daemon=True).start()

    def _start_slot(self, slot: WorkerSlot) -> None:
        slot.thread = threading.Thread(target=self._run, args=(slot,), name=f"worker-{slot.name}", daemon=True)
        slot.thread.start()

    def add_worker(self, worker: WorkerHandle) -> None:
        """A worker that appeared after start-up (a GPU node joined the cluster): schedule onto it too."""
        with self._cond:
            if any(s.name == worker.name for s in self.slots):
                return
            slot = WorkerSlot(worker, owner_id(worker.name))
            self.slots.append(slot)
            if self.started:
                self._start_slot(slot)
            self._cond.notify_all()

    def stop_claiming(self) -> None:
        """Finish what is running but start nothing new (drain); queued jobs stay on disk."""
        with self._cond:
            self._claiming = False
            self._cond.notify_all()

    def running(self) -> list[str]:
        """Ids of the jobs the healthy workers are rendering now, or whose outputs are being stored."""
        return [jid for s in self.slots if not s.fault for jid in s.busy_with] + list(self._savers.claims())

    def running_claims(self) -> list[Claim]:
        """The claims of the jobs the healthy workers are rendering now, or whose outputs are being stored."""
        return [c for s in self.slots if not s.fault for c in s.claims] + list(self._savers.claims().values())

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
        for slot in self.slots:
            # A worker taken out as hung may never return; its thread is a daemon and dies with the process.
            if slot.thread is not None and not slot.fault:
                slot.thread.join(timeout)
        self._savers.shutdown()  # rendered outputs are stored before the process goes

    def notify(self) -> None:
        """New work was queued."""
        with self._cond:
            self._cond.notify_all()

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending job now, or ask a running one to stop at its next step (whichever process runs it:
        the flag travels through the store). False if already final."""
        if self.store.cancel_if_pending(job_id):
            self.recorder.done(job_id)
            return True
        if not self.store.request_cancel(job_id):
            return False
        with self._cond:
            self._cancel_requested.add(job_id)
        return True

    def admit(self, model_id: str, weights: str, family: str, params: RenderParams) -> Admission:
        """The job's memory and time estimate on the healthy device that fits it best (see admission.py)."""
        return admit(model_id, weights, family_class(family), params, [s.handle for s in self.slots if not s.fault],
                     self.costs, self.memory)

    def cpu_only(self) -> bool:
        """Whether every healthy worker is a CPU (renders there take orders of magnitude longer); False while no
        worker is known (a cluster whose GPUs have not joined yet)."""
        devices = [s.device.rsplit("/", 1)[-1] for s in self.slots if not s.fault]
        return bool(devices) and all(d == "cpu" for d in devices)

    def _count(self, key: str) -> None:
        with self._cond:
            self.stats[key] += 1

    def _finalised(self, job_id: str) -> None:
        with self._cond:
            self._cancel_requested.discard(job_id)
        self.on_finished(job_id)

    # ---- worker thread -----------------------------------------------------------------------------------
    def _run(self, slot: WorkerSlot) -> None:
        """The worker thread: rounds of schedule -> claim -> render -> record until stopped. A round that raises
        (the job store locked or gone, a full disk) is logged and counted, the jobs it held go back to the queue,
        and the next round starts after a growing pause: nothing around a render ends this thread."""
        self._warm(slot)
        errors = 0
        while True:
            try:
                if not self._round(slot):
                    return
                errors = 0
            except Exception as exc:  # noqa: BLE001 - see the docstring: the thread must outlive any fault
                errors += 1
                with self._cond:
                    self.stats["loop_errors"] += 1
                self._round_failures.failed(exc, self.faults.delay(errors))
                with self._cond:
                    self._cond.wait(timeout=self.faults.delay(errors))

    def _round(self, slot: WorkerSlot) -> bool:
        """Claim and run one batch (or wait for work); False once the worker should stop."""
        gate_open = self.storage.open()
        with self._cond:
            if self._stopping or slot.fault:
                return False
            if not self._claiming or not gate_open:
                self._cond.wait(timeout=self.wait_s)
                return True
            plan, jobs = self._claim_next(slot)
            if not jobs:
                # The timeout also picks up work re-queued by another process, a missed notify, and
                # batches that are gathering mates (max_wait_s).
                self._cond.wait(timeout=self.wait_s)
                return True
            slot.beat = time.monotonic()
            slot.busy_with = tuple(j.id for j in jobs)
            slot.claims = [Claim.of(j) for j in jobs]
            held = list(slot.claims)
        assert plan is not None
        now = time.time()
        for job in jobs:
            event(log, "job.claimed", f"claimed {job.id} {job.model} on {slot.name} (attempt {job.attempts}, batch of "
                  f"{len(jobs)})", job_id=job.id, model=job.model, worker=slot.name, device=slot.device,
                  attempt=job.attempts, batch=len(jobs), queued_s=round(now - job.created_at, 3))
        try:
            self._execute_batch(slot, jobs, plan)
        except BaseException:
            self._give_back(held)
            raise
        finally:
            with self._cond:
                slot.busy_with, slot.claims = (), []
        return True

    def _give_back(self, claims: list[Claim]) -> None:
        """Best effort after a failed round: jobs still held (not finished, not with the savers) go back to the
        queue; if the store cannot take them now, their leases lapse and they go back then."""
        saving = self._savers.claims()
        mine = [c for c in claims if c.job_id not in saving]
        try:
            self.store.requeue([c.job_id for c in mine], mine)
        except Exception:  # noqa: BLE001 - the lease is the fallback
            log.warning("could not give %d job(s) back now; they return when their leases lapse", len(mine))

    def _warm(self, slot: WorkerSlot) -> None:
        for weights in self.preload:
            try:
                slot.handle.preload([weights])
            except Exception:  # a model that cannot load must not kill the worker; jobs report it
                log.exception("could not preload %s on %s", weights, slot.device)
                self.load_failures[weights] = f"{weights} could not be loaded on {slot.device}"
        with self._cond:
            self._preloaded += 1
            if self._preloaded >= len(self.slots):
                self.ready.set()

    def _claim_next(self, slot: WorkerSlot) -> tuple[Plan | None, list[JobRecord]]:
        """Called with `_cond` held."""
        queue = self.store.pending()
        if not queue:
            return None, []
        peers = tuple(s.handle.state() for s in self.slots
                      if s is not slot and not s.fault and not s.busy_with and s.alive)
        view = WorkerView(name=slot.name, device=slot.device, state=slot.handle.state(), idle_peers=peers)
        plan = self.scheduler.schedule(queue, view, time.time())
        if plan is None:
            return None, []
        return plan, self.store.claim(list(plan.job_ids), slot.name, slot.owner)

    def _execute_batch(self, slot: WorkerSlot, jobs: list[JobRecord], plan: Plan) -> None:
        """Run a planned batch: one shared pipeline call when the family can merge its requests, else in turn."""
        parsed: list[tuple[JobRecord, GenerationRequest]] = []
        for job in jobs:
            try:
                parsed.append((job, GenerationRequest.from_json(job.request)))
            except Exception as exc:  # noqa: BLE001 - a row this release cannot read fails alone
                self.recorder.fault(job, Claim.of(job), exc)
        if not parsed:
            return
        jobs, requests = [j for j, _ in parsed], [r for _, r in parsed]
        fam = family_class(requests[0].family)
        shared = len(jobs) > 1 and all(fam.can_merge(r.params) for r in requests)
        info = {"id": secrets.token_hex(6), "size": len(jobs), "shared_call": shared, "worker": slot.name,
                "not_batched": dict(plan.not_batched)}
        self._note_batch([j.id for j in jobs], info)
        self.observe_batch(jobs[0].model, len(jobs))
        with self._cond:
            self.stats["batches"] += 1
            self.stats["batched_jobs"] += len(jobs)
            self.stats["shared_calls"] += int(shared)
            self.not_batched.update(plan.not_batched)
        calls = [Call(tuple(jobs), tuple(requests))] if shared else \
            [Call((j,), (r,)) for j, r in zip(jobs, requests, strict=True)]
        for call in calls:
            self._run_call(slot, call, info)

    def _note_batch(self, job_ids: list[str], info: dict[str, Any]) -> None:
        """Record which batch ran the jobs (bookkeeping: a busy store skips it rather than stopping the batch)."""
        try:
            self.store.set_batch(job_ids, info)
        except Exception:  # noqa: BLE001 - see the docstring
            log.warning("could not record batch %s of %d job(s); running it anyway", info["id"], len(job_ids))

    def _work(self, call: Call, force: Placement | None) -> RenderWork:
        """The render for a call: one request as it is, or several merged (prompts, seeds and inputs per image)."""
        first = call.requests[0]
        params = first.params
        if len(call.requests) > 1:
            params = replace(params, num_images=sum(r.params.num_images for r in call.requests),
                             seeds=tuple(s for r in call.requests for s in r.params.seeds),
                             prompts=tuple(p for r in call.requests for p in [r.params.prompt] * r.params.num_images),
                             negative_prompts=tuple(n for r in call.requests
                                                    for n in [r.params.negative_prompt] * r.params.num_images))
        read = self.inputs.read
        # A merged call's inputs are per image; one request's serve all of its images.
        per_image = [(r, n) for r in call.requests for n in range(r.params.num_images)] if len(call.requests) > 1 \
            else [(first, 0)]
        return RenderWork(
            weights=first.weights, family=first.family, params=params,
            sources=tuple(read(p) for r, _ in per_image for p in r.source_paths),
            references=tuple(read(p) for r, _ in per_image for p in r.reference_paths),
            masks=tuple(read(r.mask_path) for r, _ in per_image if r.mask_path),
            force=force, demand=self.store.pending_by_weights())

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

    def _run_call(self, slot: WorkerSlot, call: Call, info: dict[str, Any], force: Placement | None = None) -> None:
        """One pipeline call and everything that can follow from it: the one outcome path. Reading the inputs is
        inside it, so a job whose inputs cannot be read fails (or is retried) alone."""
        claims = {j.id: Claim.of(j) for j in call.jobs}
        try:
            work = self._work(call, force)
        except Exception as exc:  # noqa: BLE001 - classified per job: retried, waiting or failed with its code
            for job in call.jobs:
                self.recorder.fault(job, claims[job.id], exc)
            return
        started = time.time()
        memory_before = slot.handle.memory_allocated()
        try:
            outcome: Outcome = slot.handle.render(work, self._on_step(slot, call.ids))
        except Exception as exc:  # the interface says a render never raises; if one does, it failed
            log.exception("render of %s raised instead of returning an outcome", ", ".join(sorted(call.ids)))
            outcome = Failed(f"{type(exc).__name__}: {exc}")
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

    def _take_out(self, slot: WorkerSlot, job_ids: list[str], reason: str, claims: list[Claim],
                  restart: bool = True) -> None:
        """The device is poisoned, the worker hung or went away: stop using it and give its jobs back to the queue
        (and, for a poisoned device or a hung thread, ask for a process restart)."""
        with self._cond:
            if slot.fault:
                return
            slot.fault = f"{slot.device}: {reason}; taken out of service"
        requeued = self.store.requeue(job_ids, claims)
        log.error("%s: %s; worker %s taken out, %d job(s) re-queued", slot.device, reason, slot.name, requeued)
        with self._cond:
            kind = "device_faults" if reason == "device fault" else "hung_workers" if restart else "workers_lost"
            self.stats[kind] += 1
            self._cond.notify_all()
        if restart:
            self.on_fault(slot.fault)

