"""Prometheus metrics through prometheus-client: one registry per app (no global), event metrics recorded where
things happen (HTTP middleware, the engine, admission), and a collector that reads the engine's live state
(queue per model, residency, device memory) at scrape time.

Series (all prefixed `darkroom_`): http_requests_total and http_request_duration_seconds by route, dialect, model
and status; job_queue_wait_seconds and job_run_seconds by model and outcome; images_generated_total and
video_seconds_generated_total by model; batch_size by model; admission_refusals_total by reason; and, live,
queue_jobs by model, jobs by status, model_resident_bytes, model_host_ram_bytes, worker_up,
worker_budget_bytes, device_memory_bytes (allocated, reserved), model_loads_total, bytes_moved_total,
batches/batched_jobs/shared_calls/oom_splits/oom_retries/device_faults/worker_restarts/loop_errors/
supervision_errors/job_retries/parked_for_storage _total, not_batched_total by reason.

Every labelled series a dashboard reads exists from the first scrape, at 0 (`prime` for each served model and each
refusal reason; the collector for each served weights entry, each worker and each reason a request can be left out
of a batch), so an idle server's panels show 0 rather than "no data". On a CPU worker (no device memory and no
budget) device_memory_bytes and worker_budget_bytes read 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import fields
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from pipelines.batching import BatchKey
from server.engine.snapshot import EngineSnapshot, WorkerState
from server.sent_status import SentStatus

REQUEST_MODEL: ContextVar[str] = ContextVar("darkroom_request_model", default="")
"""The model id a request asked for, set by the service while it handles it (read back by the HTTP middleware)."""

REFUSAL_REASONS = ("queue_full", "quota_exceeded", "insufficient_vram", "shutting_down", "storage_full")
"""Why a submission is refused before a job exists (the service's `on_refused`)."""
NOT_BATCHED_REASONS = ("batch_full", *(f.name for f in fields(BatchKey)))
"""Why a queued job was left out of a batch: the batch was full, or the first batch-key field that differed."""
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 32)


class Metrics:
    """The app's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("darkroom_http_requests", "HTTP requests answered.",
                                ["route", "dialect", "model", "status"], registry=r)
        self.request_seconds = Histogram("darkroom_http_request_duration_seconds", "Seconds to answer a request.",
                                         ["route", "dialect", "model", "status"], buckets=_SECONDS, registry=r)
        self.queue_wait = Histogram("darkroom_job_queue_wait_seconds", "Seconds a job waited before it ran.",
                                    ["model"], buckets=_SECONDS, registry=r)
        self.run_seconds = Histogram("darkroom_job_run_seconds", "Seconds from a job's claim to its final state.",
                                     ["model", "outcome"], buckets=_SECONDS, registry=r)
        self.images = Counter("darkroom_images_generated", "Images delivered.", ["model"], registry=r)
        self.video_seconds = Counter("darkroom_video_seconds_generated", "Seconds of video delivered.", ["model"],
                                     registry=r)
        self.batch_size = Histogram("darkroom_batch_size", "Jobs per batch run.", ["model"], buckets=_BATCH,
                                    registry=r)
        self.refusals = Counter("darkroom_admission_refusals", "Submissions refused before a job existed, by reason.",
                                ["reason"], registry=r)

    def prime(self, models: list[str]) -> None:
        """Create every labelled series a dashboard reads at 0: per served model id and per refusal reason."""
        for model in models:
            self.images.labels(model)
            self.video_seconds.labels(model)
            self.queue_wait.labels(model)
            self.run_seconds.labels(model, "completed")
            self.batch_size.labels(model)
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)

    def watch(self, state: Callable[[], EngineSnapshot], weights: list[str]) -> None:
        """Report the engine's live state (its snapshot, what /api/v1/engine shows) at each scrape, with a 0 for each served
        `weights` entry that has nothing queued, parked or resident."""
        self.registry.register(_EngineCollector(state, weights))

    def job_finished(self, model: str, outcome: str, created: float, started: float | None, finished: float | None,
                     result: dict[str, Any] | None) -> None:
        """A job reached its final state."""
        if started is not None:
            self.queue_wait.labels(model).observe(max(0.0, started - created))
            self.run_seconds.labels(model, outcome).observe(max(0.0, (finished or time.time()) - started))
        if result:
            self.images.labels(model).inc(len(result.get("images", [])))
            self.video_seconds.labels(model).inc(sum(v.get("duration", 0) for v in result.get("videos", [])))

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


def gauge(name: str, doc: str, labels: list[str], samples: list[tuple[list[str], float]]) -> GaugeMetricFamily:
    """A darkroom_ gauge family with its samples."""
    family = GaugeMetricFamily(f"darkroom_{name}", doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def counter(name: str, doc: str, labels: list[str], samples: list[tuple[list[str], float]]) -> CounterMetricFamily:
    """A darkroom_ counter family with its samples."""
    family = CounterMetricFamily(f"darkroom_{name}", doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


class _EngineCollector(Collector):
    def __init__(self, state: Callable[[], EngineSnapshot], weights: list[str]) -> None:
        self.state = state
        self.weights = weights

    def collect(self) -> Iterator[Any]:
        snap = self.state()
        yield from self._workers(snap.workers)
        yield from self._gangs(snap.gangs)
        yield from self._queue_and_counters(snap)

    def _gangs(self, gangs: tuple[Mapping[str, Any], ...]) -> Iterator[Any]:
        labels = [([str(g["name"]), str(g["gpus"])], g) for g in gangs]
        yield gauge("gang_formed", "1 while a gang's ranks hold a model on its devices.", ["gang", "gpus"],
                    [(names, 1 if g["formed"] else 0) for names, g in labels])
        yield gauge("gang_current_jobs", "Jobs a gang is running (0 or 1).", ["gang", "gpus"],
                    [(names, len(g["current_batch"])) for names, g in labels])
        yield counter("gang_renders", "Jobs a gang rendered.", ["gang", "gpus"],
                      [(names, g["renders"]) for names, g in labels])
        yield counter("gang_forms", "Times a gang started its ranks and loaded a model.", ["gang", "gpus"],
                      [(names, g["forms"]) for names, g in labels])
        yield counter("gang_rank_losses", "Ranks of a gang that died mid-render (the job went back once).",
                      ["gang", "gpus"], [(names, g["rank_losses"]) for names, g in labels])

    def _workers(self, workers: tuple[WorkerState, ...]) -> Iterator[Any]:
        yield gauge("model_resident_bytes", "Weight bytes of a model on a worker's device.",
                    ["worker", "device", "model", "placement"],
                    [([w.name, w.device, r.weights, r.placement or ""], r.bytes) for w in workers
                     for r in w.resident])
        parked = {(w.name, r.weights): r.bytes for w in workers for r in w.host_ram}
        yield gauge("model_host_ram_bytes", "Weight bytes of a model parked in a worker's host-RAM tier.",
                    ["worker", "model"], [([w.name, m], parked.get((w.name, m), 0)) for w in workers
                                          for m in sorted({*self.weights, *(k[1] for k in parked)})])
        yield gauge("worker_budget_bytes", "Device bytes a worker may use (0: unmanaged, a CPU).",
                    ["worker", "device"], [([w.name, w.device], w.budget_bytes or 0) for w in workers])
        yield gauge("worker_up", "1 while a worker is in service, 0 once its device was taken out.",
                    ["worker", "device"], [([w.name, w.device], 0 if w.fault else 1) for w in workers])
        yield gauge("worker_current_batch_jobs", "Jobs in the batch a worker is running.", ["worker"],
                    [([w.name], len(w.busy_with)) for w in workers])
        yield gauge("device_memory_bytes", "Device memory the allocator holds (allocated) and caches (reserved); "
                    "0 on a CPU.", ["worker", "device", "kind"],
                    [([w.name, w.device, kind], (w.memory or {}).get(kind, 0)) for w in workers
                     for kind in ("allocated", "reserved")])
        yield counter("model_loads", "Models a worker brought onto its device (from disk or host RAM).", ["worker"],
                      [([w.name], w.loads) for w in workers])
        yield counter("model_evictions", "Models a worker dropped or parked to make room.", ["worker"],
                      [([w.name], w.evictions) for w in workers])
        yield counter("bytes_moved", "Weight bytes a worker moved between disk, host RAM and device.", ["worker"],
                      [([w.name], w.bytes_moved) for w in workers])

    def _queue_and_counters(self, snap: EngineSnapshot) -> Iterator[Any]:
        held = snap.queue
        queue = {**{m: 0 for m in self.weights}, **(held.pending_by_weights if held else {})}
        yield gauge("queue_jobs", "Pending jobs per model (weights entry).", ["model"],
                    [([m], n) for m, n in sorted(queue.items())])
        jobs = {**{s: 0 for s in ("pending", "processing", "completed", "failed", "cancelled")},
                **(held.counts if held else {})}
        yield gauge("jobs", "Jobs per status.", ["status"], [([s], n) for s, n in sorted(jobs.items())])
        b = snap.batching
        for key, doc in (("batches", "Batches run."), ("batched_jobs", "Jobs run in those batches."),
                         ("shared_calls", "Batches whose requests shared one pipeline call."),
                         ("oom_splits", "Shared calls split after running out of memory."),
                         ("oom_retries", "Single jobs retried with offload after running out of memory."),
                         ("device_faults", "Devices taken out after a fault."),
                         ("worker_restarts", "Worker threads that died and were started again."),
                         ("loop_errors", "Engine rounds that failed (store locked or away, disk full), tried again."),
                         ("supervision_errors", "Supervision rounds that failed and were tried again."),
                         ("job_retries", "Jobs given back to the queue after a failure around their render."),
                         ("parked_for_storage", "Rendered jobs given back: their outputs could not be stored.")):
            yield counter(key, doc, [], [([], b.get(key, 0))])
        not_batched = {**{r: 0 for r in NOT_BATCHED_REASONS}, **snap.not_batched}
        yield counter("not_batched", "Queued jobs of the running model left out of a batch, by reason.", ["reason"],
                      [([r], n) for r, n in sorted(not_batched.items())])


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template, dialect, model and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, dialect_of: Callable[[str], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.dialect_of = dialect_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = SentStatus(send)
        token = REQUEST_MODEL.set("")
        try:
            await self.app(scope, receive, sent.send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            labels = (route, self.dialect_of(scope["path"]), REQUEST_MODEL.get(), str(sent.status or 500))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.request_seconds.labels(*labels).observe(time.perf_counter() - started)
            REQUEST_MODEL.reset(token)
