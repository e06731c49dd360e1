"""The engine loop: per worker, schedule -> claim -> render -> record, with plain data between the steps.

Every way a render ends is a typed `Outcome` from the worker interface, and one path (`_run_call`) handles the
outcomes of solo and shared calls alike; reading a job's inputs is inside that path, and how each job ends is
written by the `Recorder` (recording.py), so a failure around a render (an input gone, the store locked, the disk
full) ends, retries or parks that job and never the worker thread. Jobs are held under leases that the
supervision thread (supervision.py) renews; it also puts lapsed leases back in the queue (another process's crash,
say), takes out hung workers and restarts worker threads that died.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pipelines.base import RenderParams
from pipelines.memory import MemoryCoefficients
from pipelines.previews import PreviewOptions
from pipelines.registry import family_class
from server.engine.admission import Admission, admit
from server.engine.call_outcomes import CallOutcomes
from server.engine.costs import Costs
from server.engine.gang_rounds import GangRounds
from server.engine.gang_scheduling import GangScheduling
from server.engine.policy import Placement
from server.engine.recording import Recorder
from server.engine.recovery import FaultPolicy, RoundFailures, StorageGate
from server.engine.request import GenerationRequest
from server.engine.saving import Savers
from server.engine.scheduler import Plan, Scheduler, WorkerView
from server.engine.slots import Call, WorkerSlot
from server.engine.snapshot import EngineSnapshot, QueueState, WorkerState
from server.engine.supervision import Supervision
from server.engine.worker_handle import WorkerHandle
from server.jobs.leases import owner_id
from server.jobs.store import Claim, JobRecord, JobStore
from server.logs import event
from server.media.storage import InputStore, OutputStore, PreviewStore

if TYPE_CHECKING:
    from server.config import DarkroomConfig
    from server.settings import EngineSettings

log = logging.getLogger("darkroom.engine")

_GENERATION_FAILED = {"code": "generation_failed", "field": None,
                      "message": "the model failed while rendering this job; the server log has details for "}
_OFFLOAD_LADDER = (Placement.MODEL_OFFLOAD, Placement.GROUP_OFFLOAD)


@dataclass(frozen=True)
class EngineHooks:
    """What the engine tells the rest of the server; each defaults to nothing."""

    on_finished: Callable[[str], object] = lambda _job_id: None
    """Called with each job id that reached a final state (completion waiters, webhooks)."""
    on_fault: Callable[[str], None] = lambda _reason: None
    """Called when the engine cannot go on in this process (a restart is asked for)."""
    observe: Callable[[JobRecord], None] = lambda _record: None
    """Called with each job's final record (metrics)."""
    observe_batch: Callable[[str, int], None] = lambda _model, _size: None
    """Called with (model, jobs) as each batch starts (metrics)."""
    storage_probe: Callable[[], None] | None = None
    """A small write that succeeds once output storage has room again."""
    adapter_bytes: Callable[[str], bytes | None] = lambda _sha256: None
    """A LoRA file by content hash (the LoRA library), sent to a worker that does not hold it converted."""


class Engine(CallOutcomes, GangRounds):
    """Runs pending jobs on the workers. Each worker has its own thread; the scheduler decides what it runs."""

    reap_every_s: float = 2.0
    """How often lapsed leases are looked for."""

    def __init__(self, store: JobStore, scheduler: Scheduler, workers: Sequence[WorkerHandle], outputs: OutputStore,
                 inputs: InputStore, settings: EngineSettings, config: DarkroomConfig,
                 hooks: EngineHooks = EngineHooks(), faults: FaultPolicy | None = None) -> None:
        self.store = store
        self.memory: Mapping[str, MemoryCoefficients] = config.memory
        self.costs: Costs = config.costs
        self.hooks = hooks
        self.scheduler = scheduler
        self.slots = [WorkerSlot(w, owner_id(w.name)) for w in workers]
        self.outputs = outputs
        self.inputs = inputs
        self.previews = PreviewStore(outputs.blobs)
        self.preview_options = PreviewOptions(every_steps=settings.preview_every_steps,
                                              min_interval_s=settings.preview_min_interval_s,
                                              max_side=settings.preview_max_side)
        self.preload = sorted(config.weights_needed())
        # One condition guards scheduling: a worker plans and claims while holding it, so no job is planned twice.
        self._cond = threading.Condition()
        self._stopping = False
        self.ready = threading.Event()
        self._preloaded = 0
        self.load_failures: dict[str, str] = {}
        self._cancel_requested: set[str] = set()
        # A worker with nothing to claim re-checks at least this often (sooner while batches gather mates).
        self.wait_s = min(1.0, settings.batch_max_wait_s / 2) if settings.batch_max_wait_s > 0 else 1.0
        self.stats: Counter[str] = Counter()
        self.not_batched: Counter[str] = Counter()
        self.step_timeout_s = settings.step_timeout_s
        self._claiming = True
        self.started = False
        """Whether this process runs the engine (with the Ray backend only the front end holding the engine lock
        does; the others take requests and show the workers)."""
        # Set when a drain ran out of time: running jobs stop at their next step and go back to the queue.
        self._interrupt = threading.Event()
        # Finished renders are stored off the device's thread, so the next call starts at once; their leases stay
        # renewed (they count as running) until stored.
        self._savers = Savers(settings.save_threads)
        self.faults = faults = faults or FaultPolicy.of(settings)
        self.storage = StorageGate(hooks.storage_probe, faults)
        """Closed while storage is full: nothing new starts, accepted jobs wait."""
        self.recorder = Recorder(store, outputs, self._savers, self.storage, faults, self._count, self._finalised,
                                 hooks.observe)
        self._supervision = Supervision(self)
        self._round_failures = RoundFailures("an engine round")
        self.gangs = GangScheduling.of(settings, config, store, lambda weights: self.slots[0].handle.footprint(weights))

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

    @property
    def storage_full(self) -> bool:
        """Whether new jobs wait because finished ones could not store their outputs."""
        return self.storage.closed_by is not None

    def snapshot(self, queue: bool = True) -> EngineSnapshot:
        """The engine's state as one immutable view (the read model the API and metrics use). Blocking: workers
        may be remote and, with `queue`, the store is read; call it off the event loop."""
        workers, gangs = [], []
        for slot in list(self.slots):
            view = slot.handle.snapshot()
            if slot.handle.gpus > 1:
                gangs.append({**view, "alive": slot.alive, "fault": slot.fault, "current_batch": list(slot.busy_with)})
                continue
            # A front end that does not run the engine (another holds the lock) has no worker threads: its
            # workers count as alive while they answer.
            alive = slot.alive if self.started else not view.get("unreachable")
            workers.append(WorkerState.of(view, alive, slot.fault, tuple(slot.busy_with)))
        return EngineSnapshot(
            workers=tuple(workers), gangs=tuple(MappingProxyType(g) for g in gangs), running=tuple(self.running()),
            runs_engine=self.started,
            ready=self.ready.is_set(), load_failures=tuple(sorted(self.load_failures.values())),
            storage_full=self.storage_full, batching=MappingProxyType(dict(self.stats)),
            not_batched=MappingProxyType(dict(self.not_batched)),
            queue=QueueState(MappingProxyType(self.store.pending_by_weights()),
                             MappingProxyType(self.store.counts())) if queue else None)

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
        for slot in self.slots:
            if slot.handle.gpus > 1 and not slot.busy_with:
                slot.handle.release()  # gang ranks end with the engine, not whenever the process does
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
        return admit(model_id, weights, family_class(family), params,
                     [s.handle for s in self.slots if not s.fault and s.handle.gpus == 1], self.costs, self.memory)

    def cpu_only(self) -> bool:
        """Whether every healthy worker is a CPU (renders there take orders of magnitude longer); False while no
        worker is known (a cluster whose GPUs have not joined yet)."""
        devices = [s.device.rsplit("/", 1)[-1] for s in self.slots if not s.fault and s.handle.gpus == 1]
        return bool(devices) and all(d == "cpu" for d in devices)

    def _count(self, key: str) -> None:
        with self._cond:
            self.stats[key] += 1

    def _finalised(self, job_id: str) -> None:
        with self._cond:
            self._cancel_requested.discard(job_id)
        self.hooks.on_finished(job_id)

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
            members = self._members(slot)
            for member in members:
                member.held_by = slot.name
            # A gang that formed over this device holds memory a single-device job needs: it ends first.
            formed = [] if members else [g for g in self.slots if slot.name in g.handle.members and not g.busy_with]
        assert plan is not None
        now = time.time()
        for job in jobs:
            event(log, "job.claimed", f"claimed {job.id} {job.model} on {slot.name} (attempt {job.attempts}, batch of "
                  f"{len(jobs)})", job_id=job.id, model=job.model, worker=slot.name, device=slot.device,
                  attempt=job.attempts, batch=len(jobs), queued_s=round(now - job.created_at, 3))
        try:
            self._hand_over(slot, members, formed, plan)
            self._execute_batch(slot, jobs, plan)
        except BaseException:
            self._give_back(held)
            raise
        finally:
            with self._cond:
                slot.busy_with, slot.claims = (), []
                for member in members:
                    member.held_by = None
                self._cond.notify_all()
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
        if not queue or slot.held_by:
            return None, []
        wanted = self._gang_wanted(queue)
        if slot.handle.gpus > 1:
            return self._claim_for_gang(slot, queue, wanted)
        if wanted:
            self._cond.notify_all()  # the gangs' threads take those
            queue = [j for j in queue if j.id not in wanted]
            if not queue:
                return None, []
        peers = tuple(s.handle.state() for s in self.slots
                      if s is not slot and not s.fault and not s.busy_with and s.alive and s.handle.gpus == 1)
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
                request = GenerationRequest.from_json(job.request)
            except Exception as exc:  # noqa: BLE001 - a row this release cannot read fails alone
                self.recorder.fault(job, Claim.of(job), exc)
                continue
            if request.start_by is not None and time.time() > request.start_by:
                self.recorder.fail(job.id, {"code": "start_timeout", "field": None, "message": (
                    "the job was not started before its start deadline (X-Fal-Request-Timeout); send it again, "
                    "with a longer deadline or none")}, Claim.of(job))
                continue
            parsed.append((job, request))
        if not parsed:
            return
        jobs, requests = [j for j, _ in parsed], [r for _, r in parsed]
        fam = family_class(requests[0].family)
        shared = len(jobs) > 1 and all(fam.can_merge(r.params) for r in requests)
        info = {"id": secrets.token_hex(6), "size": len(jobs), "shared_call": shared, "worker": slot.name,
                "not_batched": dict(plan.not_batched)}
        self._note_batch([j.id for j in jobs], info)
        self.hooks.observe_batch(jobs[0].model, len(jobs))
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
            self.hooks.on_fault(slot.fault)

