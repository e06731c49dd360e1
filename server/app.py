"""create_app(settings): assembles the server from its parts. No module-level state."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from pipelines.memory import load_memory_table
from server.acceleration_config import Acceleration
from server.api import docs, files, health
from server.api import engine as engine_api
from server.api.access_log import AccessLogMiddleware
from server.api.auth import ApiKeyMiddleware
from server.api.dialect import ErrorShaper
from server.api.errors import install_error_handlers
from server.api.idempotency import RESERVATION_STALE_S
from server.api.openapi_doc import documented_openapi
from server.api.registry import DIALECTS
from server.api.request_body import BodySizeLimit
from server.api.request_id import RequestIdMiddleware
from server.backends import build_workers, open_blobs, open_store
from server.catalog import Catalog
from server.cluster.leadership import EngineLeadership
from server.context import AppContext
from server.dialects import ModelNames
from server.engine.completion import CompletionHub
from server.engine.costs import load_costs
from server.engine.loop import Engine
from server.engine.policy import BatchConfig
from server.engine.recovery import FaultPolicy
from server.engine.scheduler import VramAwareScheduler
from server.engine.worker_handle import WorkerHandle
from server.jobs.lock import DataDirLock
from server.jobs.offloop import OffLoop
from server.keys import KeyRing
from server.lifecycle import Lifecycle
from server.logs import route_library_logs
from server.media.fetch import FetchLimits, ImageFetcher
from server.media.netguard import Allowlist
from server.media.signing import UrlSigner
from server.media.storage import InputStore, OutputStore
from server.media.uploads import UploadStore
from server.metrics import Metrics, MetricsMiddleware
from server.retention import Sweeper
from server.service import GenerationService
from server.settings import Settings
from server.studio import routes as studio
from server.version import __version__
from server.webhooks import RetryPolicy, Webhooks, local_secret
from weights.manifest import load_manifest

log = logging.getLogger("darkroom")


def _announce_demo(demo: frozenset[str]) -> None:
    if demo:
        banner = "!" * 78
        log.warning("%s\nDEMO MODE: %s run on tiny RANDOM weights. Outputs are noise, not edits.\n"
                    "Pull real weights with `darkroom weights pull NAME` (see `darkroom weights list`).\n%s",
                    banner, ", ".join(sorted(demo)), banner)


def create_app(settings: Settings) -> FastAPI:
    """Build the ASGI app. Workers start with the app's lifespan and stop with it.

    The app's `state.lifecycle` drains it (SIGTERM) or restarts it (device fault); whoever runs the HTTP
    server binds `lifecycle.on_exit` to that server's exit.
    """
    settings.check_bind_safety()
    settings.check_file_sharing()
    route_library_logs()
    keys = KeyRing.load(settings.api_key.get_secret_value() if settings.api_key else None, settings.api_keys_file,
                        settings.rate_per_minute, settings.jobs_per_day,
                        settings.webhook_secret.get_secret_value() if settings.webhook_secret else None)
    if settings.api_keys_file is not None and not keys.enabled:
        raise ValueError(f"{settings.api_keys_file.name} holds no key: add a [keys.NAME] table or unset the file")
    data = settings.data_dir
    # Before anything touches the data dir: one server owns its inputs, outputs and demo weights.
    lock = DataDirLock(data)
    lock.acquire()
    manifest = load_manifest()
    catalog = Catalog.load(manifest, settings.config("models.toml"), license_policy=settings.license_policy)
    names = ModelNames.load(set(catalog.ids()) | set(catalog.video_ids()), settings.config("dialects.toml"))
    acceleration = Acceleration.load(settings.config("acceleration.toml"), catalog)
    if settings.models:
        catalog = catalog.only(settings.models)
    needed = catalog.weights_needed()
    # The load profile does not depend on which weights turn out to be demo ones; the step-cache presets do.
    backend = build_workers(settings, manifest, needed, acceleration.serving(catalog))
    located = backend.located
    base_acceleration = acceleration

    def demo_now() -> frozenset[str]:
        return frozenset(name for name, w in located.items() if w.demo)

    _announce_demo(demo_now())
    acceleration = acceleration.serving(catalog, demo_now())
    workers = backend.handles

    store = open_store(settings)
    # Leases held by a process of this machine that is gone (the last run of this server, killed) lapse now.
    requeued = store.requeue_expired()
    if requeued:
        log.warning("re-queued %d job(s) interrupted by the last shutdown", len(requeued))
    store.release_stale_reservations(older_than_s=RESERVATION_STALE_S)
    blobs = open_blobs(settings)
    outputs = OutputStore(blobs, settings.png_compress_level)
    inputs = InputStore(blobs)
    hub = CompletionHub()
    costs = load_costs(settings.config("costs.toml"))
    memory = load_memory_table(settings.config("memory.toml"))
    # Compiled graphs persist under the data dir, so a restart loads them instead of compiling again.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(settings.compile_cache_dir or data / "compile-cache")
    # Footprints are the same on every worker (bytes from the weights' headers); Ray workers may join later.
    scheduler = VramAwareScheduler(BatchConfig(settings.max_batch, settings.batch_max_wait_s, settings.priority_s),
                                   footprint=lambda weights: engine.slots[0].handle.footprint(weights),
                                   transfer=costs.transfer)
    # A worker with nothing to claim re-checks at least this often (sooner while batches gather mates).
    wait_s = min(1.0, settings.batch_max_wait_s / 2) if settings.batch_max_wait_s > 0 else 1.0
    calls = OffLoop(deadline_s=settings.store_deadline_s)
    webhooks = Webhooks(store, Allowlist(settings.url_allowlist),
                        RetryPolicy(settings.webhook_attempts, settings.webhook_backoff_s),
                        settings.webhook_secret.get_secret_value() if settings.webhook_secret else local_secret(data),
                        calls=calls, key_secret=keys.webhook_secret)

    def finished(job_id: str) -> None:
        hub.finished(job_id)
        webhooks.finished(job_id)

    metrics = Metrics()
    engine = Engine(store, scheduler, workers, outputs, inputs, finished, costs, preload=sorted(needed),
                    wait_s=wait_s, step_timeout_s=settings.step_timeout_s,
                    on_fault=lambda reason: lifecycle.fault(reason), memory=memory,
                    observe=lambda r: metrics.job_finished(r.model, str(r.status), r.created_at, r.started_at,
                                                           r.finished_at, r.result),
                    observe_batch=lambda model, size: metrics.batch_size.labels(model).observe(size),
                    save_threads=settings.save_threads,
                    faults=FaultPolicy(settings.job_max_attempts, settings.job_retry_backoff_s,
                                       no_worker_grace_s=settings.no_worker_grace_s),
                    storage_probe=outputs.probe)
    lifecycle = Lifecycle(engine, store, settings.drain_timeout_s, restart_on_fault=settings.restart_on_fault)
    fetcher = ImageFetcher(
        Allowlist(settings.url_allowlist),
        FetchLimits(settings.max_image_bytes, settings.fetch_connect_timeout_s, settings.fetch_total_timeout_s,
                    settings.fetch_max_redirects),
    )
    service = GenerationService(catalog, store, engine, fetcher, inputs, outputs, hub, settings.max_image_pixels,
                                demo_now, settings.max_queue,
                                settings.queue_retry_after_s, draining=lambda: lifecycle.draining,
                                jobs_per_day=keys.jobs_per_day, max_side=settings.max_image_side,
                                on_accepted=webhooks.accepted,
                                presets=lambda model_id: ctx.acceleration.step_cache(model_id).encode(),
                                on_refused=lambda reason: metrics.refusals.labels(reason).inc(), calls=calls,
                                min_free_bytes=int(settings.min_free_mb * 1e6))
    uploads = UploadStore(blobs, settings.retention_s)
    sweeper = Sweeper(store, outputs, inputs, uploads, settings.retention_s,
                      int(settings.max_files_gb * 1e9) if settings.max_files_gb else None)
    signer = None if settings.files_require_key else UrlSigner(store.shared_secret("output-urls"))
    ctx = AppContext(settings, catalog, located, store, engine, service, outputs, names, webhooks, lifecycle, uploads,
                     acceleration, metrics, keys, signer)
    metrics.prime([*catalog.ids(), *catalog.video_ids()])
    metrics.watch(lambda: engine_api.engine_view(ctx), sorted(needed))
    for dialect in DIALECTS:
        if dialect.webhook is not None:
            webhooks.builder(dialect.name, lambda record, base, event, shape=dialect.webhook: shape(record, base,
                                                                                                   event, ctx))

    # With shared workers (a Ray cluster) only the front end holding the engine lock runs the engine.
    def joined(handle: WorkerHandle) -> None:
        """A cluster worker joined: it says which weights it runs as demo ones."""
        fresh = handle.demo_weights() & located.keys() - demo_now()
        if fresh:
            for name in fresh:
                located[name] = replace(located[name], demo=True)
            _announce_demo(fresh)
            ctx.acceleration = base_acceleration.serving(catalog, demo_now())

    leadership = EngineLeadership(engine, store.engine_lock(), backend.cluster,
                                  on_lost=lambda reason: lifecycle.fault(reason),
                                  on_joined=joined) if backend.cluster else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if leadership is not None:
            leadership.start()
        else:
            engine.start()
        await webhooks.attach(asyncio.get_running_loop())
        sweeping = asyncio.create_task(sweeper.run(settings.sweep_interval_s))
        try:
            yield
        finally:
            sweeping.cancel()
            if leadership is not None:
                leadership.stop()
            lifecycle.draining = True
            await webhooks.stop()
            engine.stop()
            calls.close()
            store.close()
            lock.release()

    app = FastAPI(title="darkroom", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Self-hosted image editing that speaks the hosted platforms' APIs.")
    app.state.ctx = ctx
    app.openapi = lambda: documented_openapi(app, DIALECTS)  # type: ignore[method-assign]
    app.state.lifecycle = lifecycle
    shaper = ErrorShaper(DIALECTS)

    def dialect_of(path: str) -> str:
        return next((d.name for d in DIALECTS if d.owns(path)), "other")

    install_error_handlers(app, shaper)
    for router in (health.router, docs.router, files.router, engine_api.router, studio.router,
                   *(r for dialect in DIALECTS for r in dialect.routers)):
        app.include_router(router)
    # Inside the key check: an unauthenticated client cannot make the server read a large body.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, shaper=shaper)
    if keys.enabled:
        app.add_middleware(ApiKeyMiddleware, keys=keys, shaper=shaper, signer=signer,
                           open_paths={"/metrics"} if settings.metrics_public else set())
    # Outside the key check, inside the metrics: refusals are logged, with the model the request named.
    app.add_middleware(AccessLogMiddleware, dialect_of=dialect_of)
    # Outside the key check: refused requests are counted and carry a request id too.
    app.add_middleware(MetricsMiddleware, metrics=metrics, dialect_of=dialect_of)
    app.add_middleware(RequestIdMiddleware)
    if settings.cors_origins:
        # Added last, so outermost: browsers' preflights carry no key and must be answered before the key check.
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key", "x-key", "x-goog-api-key",
                                          "Idempotency-Key", "Prefer"],
                           # Headers the providers' browser clients read from answers.
                           expose_headers=["x-fal-request-id", "Retry-After", "X-Request-Id"])
    return app
