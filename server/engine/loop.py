"""The engine loop: per worker, schedule -> claim -> execute -> record, with plain data between steps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from pipelines.base import ParamError, RenderCancelled
from server.engine.request import GenerationRequest
from server.engine.scheduler import Scheduler, WorkerView
from server.jobs.store import JobRecord, JobStatus, JobStore
from server.media.storage import OutputStore

if TYPE_CHECKING:
    # The worker module imports torch; the engine loop itself only passes workers around.
    from server.engine.worker import Rendered, Worker

log = logging.getLogger("darkroom.engine")


def _versions() -> dict[str, str]:
    return {pkg: version(pkg) for pkg in ("torch", "diffusers", "transformers")}


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

    def start(self) -> None:
        """Start one thread per worker."""
        for worker in self.workers:
            worker.thread = threading.Thread(target=self._run, args=(worker,), name=f"worker-{worker.name}",
                                             daemon=True)
            worker.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the threads to stop after their current job and wait for them."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for worker in self.workers:
            if worker.thread is not None:
                worker.thread.join(timeout)

    def notify(self) -> None:
        """New work was queued."""
        with self._cond:
            self._cond.notify_all()

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending job now, or ask a running one to stop at its next step. False if already final."""
        if self.store.cancel_if_pending(job_id):
            self.on_finished(job_id)
            return True
        record = self.store.get(job_id)
        if record is None or record.status is not JobStatus.PROCESSING:
            return False
        with self._cond:
            self._cancel_requested.add(job_id)
        return True

    def alive(self) -> bool:
        """Every worker thread is running."""
        return bool(self.workers) and all(w.thread is not None and w.thread.is_alive() for w in self.workers)

    # ---- worker thread -----------------------------------------------------------------
    def _run(self, worker: Worker) -> None:
        self._warm(worker)
        while True:
            with self._cond:
                if self._stopping:
                    return
                jobs = self._claim_next(worker)
                if not jobs:
                    # The timeout also picks up work re-queued by another process or a missed notify.
                    self._cond.wait(timeout=1.0)
                    continue
            worker.busy_with = tuple(j.id for j in jobs)
            try:
                for job in jobs:
                    self._execute(worker, job)
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

    def _claim_next(self, worker: Worker) -> list[JobRecord]:
        """Called with `_cond` held."""
        queue = self.store.pending()
        if not queue:
            return []
        view = WorkerView(name=worker.name, device=worker.device, loaded=worker.loaded())
        plans = self.scheduler.schedule(queue, [view])
        if not plans:
            return []
        return self.store.claim(list(plans[0].job_ids), worker.name)

    def _execute(self, worker: Worker, job: JobRecord) -> None:
        request = GenerationRequest.from_json(job.request)
        started = time.time()
        last = [0.0]

        # Set when a render dies mid-way; memory is released after the except block has dropped the traceback.
        aborted = False

        def on_step(step: int, total: int) -> None:
            if job.id in self._cancel_requested:
                raise RenderCancelled(job.id)
            now = time.perf_counter()
            # Progress is for humans polling: a write per 100 ms is plenty.
            if step == total or now - last[0] >= 0.1:
                last[0] = now
                self.store.set_progress(job.id, step, total)

        try:
            rendered = worker.render(request, on_step)
            save_started = time.perf_counter()
            result: dict[str, Any] = self._save_outputs(request, rendered)
            save_s = time.perf_counter() - save_started
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
                    "versions": self._versions,
                },
            }
            self.store.complete(job.id, result)
        except RenderCancelled:
            aborted = True
            self.store.mark_cancelled(job.id)
            log.info("job %s cancelled on %s", job.id, worker.device)
        except ParamError as exc:
            self.store.fail(job.id, {"code": "invalid_request", "message": exc.message, "field": exc.field})
        except Exception:  # noqa: BLE001 - any pipeline fault fails this job only; details go to the log
            aborted = True
            log.exception("job %s failed on %s", job.id, worker.device)
            self.store.fail(job.id, {
                "code": "generation_failed",
                "message": f"the model failed while rendering this job; the server log has details for {job.id}",
                "field": None,
            })
        finally:
            with self._cond:
                self._cancel_requested.discard(job.id)
            if aborted:
                worker.release_memory()
            self.on_finished(job.id)

    def _save_outputs(self, request: GenerationRequest, rendered: Rendered) -> dict[str, Any]:
        """Write images or clips (with posters) to the output store; the result's file list."""
        if rendered.videos:
            videos = []
            for clip, seed in zip(rendered.videos, request.seeds, strict=True):
                v = self.outputs.save_video(clip.frames, clip.fps, clip.audio, clip.sample_rate)
                videos.append({"file": v.name, "width": v.width, "height": v.height, "num_frames": v.num_frames,
                               "fps": v.fps, "duration": round(v.num_frames / v.fps, 4), "has_audio": v.has_audio,
                               "content_type": "video/mp4", "seed": seed,
                               "poster": {"file": v.poster.name, "width": v.poster.width,
                                          "height": v.poster.height, "content_type": v.poster.content_type}})
            return {"videos": videos}
        stored = [self.outputs.save(img, request.output_format) for img in rendered.images]
        return {"images": [{"file": s.name, "width": s.width, "height": s.height, "content_type": s.content_type,
                            "seed": seed} for s, seed in zip(stored, request.seeds, strict=True)]}
