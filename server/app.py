"""create_app(settings): assembles the server from its parts. No module-level state.

The composition root: the configuration (read once), the job store, the files, the workers, the engine, the
service and the HTTP layer, wired in that order; each function here builds one layer from the ones before.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server.api import docs, files, health
from server.api import engine as engine_api
from server.api.access_log import AccessLogMiddleware
from server.api.auth import ApiKeyMiddleware
from server.api.dialect import ErrorShaper
from server.api.errors import install_error_handlers
from server.api.idempotency import RESERVATION_STALE_S
from server.api.openapi_doc import documented_openapi
from server.api.registry import DIALECTS, cors_headers, key_headers
from server.api.request_body import BodySizeLimit
from server.api.request_id import RequestIdMiddleware
from server.backends import Workers, build_workers, open_blobs, open_store
from server.cluster.leadership import EngineLeadership
from server.config import DarkroomConfig
from server.context import AppContext
from server.engine.completion import CompletionHub
from server.engine.loop import Engine, EngineHooks
from server.engine.policy import BatchConfig
from server.engine.scheduler import VramAwareScheduler
from server.engine.worker_handle import WorkerHandle
from server.jobs.lock import DataDirLock
from server.jobs.offloop import OffLoop
from server.jobs.store import JobStore
from server.keys import KeyRing
from server.lifecycle import Lifecycle
from server.logs import route_library_logs
from server.lora_requests import LoraResolver
from server.loras import LoraLibrary, served_family_layers
from server.media.fetch import FetchLimits, ImageFetcher
from server.media.netguard import Allowlist
from server.media.signing import UrlSigner
from server.media.storage import InputStore, OutputStore
from server.media.uploads import UploadStore
from server.metrics import Metrics, MetricsMiddleware
from server.retention import Sweeper
from server.service import GenerationService, JobMedia, ServiceHooks
from server.settings import AuthSettings, Settings
from server.studio import routes as studio
from server.version import __version__
from server.webhooks import RetryPolicy, Webhooks, local_secret
from weights.locate import LocatedWeights

log = logging.getLogger("darkroom")


class Serving:
    """What runs where: each weights entry located (real or demo) and the configuration with the demo weights'
    step-cache presets. Cluster workers tell which weights they run as demo ones when they join."""

    def __init__(self, config: DarkroomConfig, located: dict[str, LocatedWeights]) -> None:
        self.base = config
        self.located = located
        self.config = config.with_demo(self.demo())
        _announce_demo(self.demo())

    def demo(self) -> frozenset[str]:
        """Weights entries running as tiny demo weights."""
        return frozenset(name for name, w in self.located.items() if w.demo)

    def joined(self, handle: WorkerHandle) -> None:
        """A cluster worker joined: learn which weights it runs as demo ones."""
        fresh = handle.demo_weights() & (self.located.keys() - self.demo())
        for name in fresh:
            self.located[name] = replace(self.located[name], demo=True)
        if fresh:
            _announce_demo(frozenset(fresh))
            self.config = self.base.with_demo(self.demo())


def _announce_demo(demo: frozenset[str]) -> None:
    if demo:
        banner = "!" * 78
        log.warning("%s\nDEMO MODE: %s run on tiny RANDOM weights. Outputs are noise, not edits.\n"
                    "Pull real weights with `darkroom weights pull NAME` (see `darkroom weights list`).\n%s",
                    banner, ", ".join(sorted(demo)), banner)


@dataclass
class _Running:
    """What the lifespan starts and stops."""

    ctx: AppContext
    leadership: EngineLeadership | None
    sweeper: Sweeper
    calls: OffLoop
    lock: DataDirLock


def create_app(settings: Settings, config: DarkroomConfig | None = None) -> FastAPI:
    """Build the ASGI app over `config` (default: read from the settings' config dir). Workers start with the
    app's lifespan and stop with it. The app's `state.lifecycle` drains it (SIGTERM) or restarts it (device
    fault); whoever runs the HTTP server binds `lifecycle.on_exit` to that server's exit."""
    settings.check_bind_safety()
    settings.check_file_sharing()
    route_library_logs()
    e = settings.engine
    config = config or DarkroomConfig.load(e.config_dir, e.license_policy, e.models)
    keys = _keyring(settings.auth)
    # Before anything touches the data dir: one server owns its inputs, outputs and demo weights.
    lock = DataDirLock(settings.files.data_dir)
    lock.acquire()
    running = _assemble(settings, config, keys, lock)
    app = FastAPI(title="darkroom", version=__version__, lifespan=_lifespan(running), docs_url=None,
                  redoc_url=None, description="Self-hosted image editing that speaks the hosted platforms' APIs.")
    app.state.ctx = running.ctx
    app.state.lifecycle = running.ctx.lifecycle
    app.openapi = lambda: documented_openapi(app, DIALECTS)  # type: ignore[method-assign]
    _http(app, running.ctx, keys)
    return app


def _keyring(auth: AuthSettings) -> KeyRing:
    keys = KeyRing.load(auth.api_key.get_secret_value() if auth.api_key else None, auth.api_keys_file,
                        auth.rate_per_minute, auth.jobs_per_day,
                        auth.webhook_secret.get_secret_value() if auth.webhook_secret else None)
    if auth.api_keys_file is not None and not keys.enabled:
        raise ValueError(f"{auth.api_keys_file.name} holds no key: add a [keys.NAME] table or unset the file")
    return keys


def _open_store(settings: Settings) -> JobStore:
    store = open_store(settings)
    # Leases held by a process of this machine that is gone (the last run of this server, killed) lapse now.
    requeued = store.requeue_expired()
    if requeued:
        log.warning("re-queued %d job(s) interrupted by the last shutdown", len(requeued))
    store.release_stale_reservations(older_than_s=RESERVATION_STALE_S)
    return store


def _assemble(settings: Settings, config: DarkroomConfig, keys: KeyRing, lock: DataDirLock) -> _Running:
    """Store, files, workers, engine, service and the context the routes read."""
    backend = build_workers(settings, config)
    serving = Serving(config, backend.located)
    store = _open_store(settings)
    blobs = open_blobs(settings.files)
    outputs, inputs = OutputStore(blobs, settings.files.png_compress_level), InputStore(blobs)
    # Compiled graphs persist under the data dir, so a restart loads them instead of compiling again.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(settings.files.compile_cache_dir or
                                                settings.files.data_dir / "compile-cache")
    calls = OffLoop(deadline_s=settings.store.store_deadline_s)
    hub, metrics = CompletionHub(), Metrics()
    webhooks = Webhooks(store, Allowlist(settings.files.url_allowlist),
                        RetryPolicy(settings.server.webhook_attempts, settings.server.webhook_backoff_s),
                        settings.auth.webhook_secret.get_secret_value() if settings.auth.webhook_secret
                        else local_secret(settings.files.data_dir), calls=calls, key_secret=keys.webhook_secret)
    lifecycle_box: list[Lifecycle] = []
    loras = LoraLibrary(blobs, settings.files.lora_dir, int(settings.files.max_lora_mb * 1e6),
                        served_family_layers(backend.located))
    engine = _engine(settings, serving, backend.handles, store, outputs, inputs, metrics,
                     on_finished=lambda job_id: (hub.finished(job_id), webhooks.finished(job_id)),
                     on_fault=lambda reason: lifecycle_box[0].fault(reason), adapter_bytes=loras.read)
    lifecycle = Lifecycle(engine, store, settings.server.drain_timeout_s,
                          restart_on_fault=settings.server.restart_on_fault)
    lifecycle_box.append(lifecycle)
    service = _service(settings, serving, store, engine, MediaStores(inputs, outputs, loras), hub, keys, webhooks,
                       metrics, calls, lambda: lifecycle.draining)
    signer = None if settings.files.files_require_key else UrlSigner(store.shared_secret("output-urls"))
    ctx = AppContext(settings, serving, store, engine, service, outputs, webhooks, lifecycle,
                     UploadStore(blobs, settings.files.retention_s), metrics, keys, signer, loras)
    _observe(ctx, webhooks, metrics)
    sweeper = Sweeper(store, outputs, inputs, ctx.uploads, settings.files.retention_s,
                      int(settings.files.max_files_gb * 1e9) if settings.files.max_files_gb else None)
    return _Running(ctx, _leadership(backend, engine, store, lifecycle, serving), sweeper, calls, lock)


def _engine(settings: Settings, serving: Serving, workers: list[WorkerHandle], store: JobStore, outputs: OutputStore,
            inputs: InputStore, metrics: Metrics, on_finished: Callable[[str], object],
            on_fault: Callable[[str], None], adapter_bytes: Callable[[str], bytes | None]) -> Engine:
    e, config = settings.engine, serving.base
    engine: Engine
    # Footprints are the same on every worker (bytes from the weights' headers); Ray workers may join later.
    scheduler = VramAwareScheduler(BatchConfig(e.max_batch, e.batch_max_wait_s, e.priority_s),
                                   footprint=lambda weights: engine.slots[0].handle.footprint(weights),
                                   transfer=config.costs.transfer)
    hooks = EngineHooks(on_finished, on_fault,
                        observe=lambda r: metrics.job_finished(r.model, str(r.status), r.created_at, r.started_at,
                                                               r.finished_at, r.result),
                        observe_batch=lambda model, size: metrics.batch_size.labels(model).observe(size),
                        storage_probe=outputs.probe, adapter_bytes=adapter_bytes)
    engine = Engine(store, scheduler, workers, outputs, inputs, e, config, hooks)
    return engine


@dataclass(frozen=True)
class MediaStores:
    """Where job inputs, outputs and LoRA adapters are kept."""

    inputs: InputStore
    outputs: OutputStore
    loras: LoraLibrary


def _service(settings: Settings, serving: Serving, store: JobStore, engine: Engine, stores: MediaStores,
             hub: CompletionHub, keys: KeyRing, webhooks: Webhooks, metrics: Metrics,
             calls: OffLoop, draining: Callable[[], bool]) -> GenerationService:
    f = settings.files
    fetcher = ImageFetcher(Allowlist(f.url_allowlist), FetchLimits(
        f.max_image_bytes, f.fetch_connect_timeout_s, f.fetch_total_timeout_s, f.fetch_max_redirects))
    lora_fetcher = ImageFetcher(Allowlist(f.url_allowlist), FetchLimits(
        int(f.max_lora_mb * 1e6), f.fetch_connect_timeout_s, max(f.fetch_total_timeout_s, 300.0),
        f.fetch_max_redirects))
    resolver = LoraResolver(stores.loras, lora_fetcher, serving.base.catalog)
    hooks = ServiceHooks(serving.demo, draining, keys.jobs_per_day,
                         presets=lambda model_id: serving.config.acceleration.step_cache(model_id).encode(),
                         on_accepted=webhooks.accepted, on_refused=lambda reason: metrics.refusals.labels(reason).inc())
    return GenerationService(serving.base.catalog, store, engine, hub,
                             JobMedia(fetcher, stores.inputs, stores.outputs, resolver), f, settings.store, hooks, calls)


def _observe(ctx: AppContext, webhooks: Webhooks, metrics: Metrics) -> None:
    """Metrics read the engine's state at each scrape; each dialect shapes its own webhooks."""
    catalog = ctx.config.catalog
    metrics.prime([*catalog.ids(), *catalog.video_ids()])
    metrics.watch(ctx.engine.snapshot, sorted(catalog.weights_needed()))
    for dialect in DIALECTS:
        if dialect.webhook is not None:
            webhooks.builder(dialect.name, lambda record, base, event, shape=dialect.webhook: shape(record, base,
                                                                                                   event, ctx))


def _leadership(backend: Workers, engine: Engine, store: JobStore, lifecycle: Lifecycle,
                serving: Serving) -> EngineLeadership | None:
    """With shared workers (a Ray cluster) only the front end holding the engine lock runs the engine."""
    if not backend.cluster:
        return None
    return EngineLeadership(engine, store.engine_lock(), backend.cluster, on_lost=lambda reason: lifecycle.fault(reason),
                            on_joined=serving.joined)


def _lifespan(running: _Running) -> Callable[[FastAPI], object]:
    ctx = running.ctx

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if running.leadership is not None:
            running.leadership.start()
        else:
            ctx.engine.start()
        await ctx.webhooks.attach(asyncio.get_running_loop())
        sweeping = asyncio.create_task(running.sweeper.run(ctx.settings.files.sweep_interval_s))
        try:
            yield
        finally:
            sweeping.cancel()
            if running.leadership is not None:
                running.leadership.stop()
            ctx.lifecycle.draining = True
            await ctx.webhooks.stop()
            ctx.engine.stop()
            running.calls.close()
            ctx.store.close()
            running.lock.release()

    return lifespan


def _http(app: FastAPI, ctx: AppContext, keys: KeyRing) -> None:
    """Routes, error handlers and middleware (the last added is the outermost)."""
    shaper = ErrorShaper(DIALECTS)
    server = ctx.settings.server

    def dialect_of(path: str) -> str:
        return next((d.name for d in DIALECTS if d.owns(path)), "other")

    install_error_handlers(app, shaper)
    for router in (health.router, docs.router, files.router, engine_api.router, studio.router,
                   *(r for dialect in DIALECTS for r in dialect.routers)):
        app.include_router(router)
    # Inside the key check: an unauthenticated client cannot make the server read a large body.
    lora_cap = int(ctx.settings.files.max_lora_mb * 1e6)
    app.add_middleware(BodySizeLimit, max_bytes=server.max_body_bytes, shaper=shaper,
                       per_path={"/api/v1/loras": max(server.max_body_bytes, lora_cap + 1_000_000)})
    if keys.enabled:
        headers, schemes = key_headers()
        app.add_middleware(ApiKeyMiddleware, keys=keys, shaper=shaper, key_headers=headers, schemes=schemes,
                           signer=ctx.signer, open_paths={"/metrics"} if server.metrics_public else set())
    # Outside the key check, inside the metrics: refusals are logged, with the model the request named.
    app.add_middleware(AccessLogMiddleware, dialect_of=dialect_of)
    # Outside the key check: refused requests are counted and carry a request id too.
    app.add_middleware(MetricsMiddleware, metrics=ctx.metrics, dialect_of=dialect_of)
    app.add_middleware(RequestIdMiddleware)
    if server.cors_origins:
        # Added last, so outermost: browsers' preflights carry no key and must be answered before the key check.
        allow, expose = cors_headers()
        app.add_middleware(CORSMiddleware, allow_origins=server.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"], allow_headers=allow,
                           expose_headers=expose)
