"""The dialect-neutral generation service every HTTP dialect calls.

A dialect maps its wire fields to an `ImageAsk` or a `VideoAsk` (server/asks.py); this module checks it
against the model's limits (server/limits.py), fetches and decodes the images, resolves size, frames and
seeds, stores the inputs, asks the engine for admission, commits the job (with its webhook, the queue bound and
the key's quota in one transaction) and wakes the engine. It knows no wire format and no torch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from PIL import Image

from pipelines.base import RenderParams
from pipelines.registry import family_class
from pipelines.video_base import VideoFamily
from server import resolve
from server.asks import Ask, ImageAsk, ImageInput, VideoAsk
from server.catalog import Catalog
from server.engine.admission import Admission
from server.engine.completion import CompletionHub
from server.engine.request import GenerationRequest
from server.errors import ApiError, ErrorCode
from server.faults import StorageFull
from server.job_reports import JobReports
from server.jobs.offloop import OffLoop
from server.jobs.store import CreateResult, JobStore, NewJob, Quota, Refusal, new_task_id
from server.limits import check_image_limits, check_image_size, check_video_limits, family_check
from server.logs import event
from server.lora_requests import LoraResolver
from server.media.decode import decode_image
from server.media.fetch import ImageFetcher
from server.media.storage import InputStore, OutputStore
from server.metrics import REQUEST_MODEL

if TYPE_CHECKING:
    from server.engine.loop import Engine
    from server.settings import FilesSettings, StoreSettings

__all__ = ["GenerationService", "ImageAsk", "ImageInput", "ServiceHooks", "VideoAsk"]

_STORE_MARGIN_S = 1.0
"""How much longer than the store's own deadline the event loop waits for a commit (the store gives up first)."""
log = logging.getLogger("darkroom.jobs")

DEMO_WARNING = "this model runs on random demo weights: outputs are noise, not edits"
_DAY_S = 86400.0


def _asked(**choices: object) -> dict[str, object]:
    """The client's size choices as recorded on the job (unset ones left out)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in choices.items() if v is not None}


@dataclass(frozen=True)
class ServiceHooks:
    """What the service asks of, and tells, the rest of the server; each defaults to nothing."""

    demo_weights: Callable[[], frozenset[str]] = frozenset
    """Weights entries served from demo (random) weights now (their jobs carry a warning)."""
    draining: Callable[[], bool] = lambda: False
    jobs_per_day: Callable[[str | None], int] = lambda _caller: 0
    """A key's daily job quota (0: none)."""
    presets: Callable[[str], str] = lambda _model_id: ""
    """Model id -> its step-cache preset (configs/acceleration.toml), carried on the render parameters."""
    on_accepted: Callable[[str], None] = lambda _job_id: None
    on_refused: Callable[[str], None] = lambda _reason: None
    """Called with the reason (queue_full, quota_exceeded, insufficient_vram, shutting_down) of each refusal."""


@dataclass(frozen=True)
class JobMedia:
    """Where a job's images come from and go: the URL fetcher, the input store and the output store."""

    fetcher: ImageFetcher
    inputs: InputStore
    outputs: OutputStore
    loras: LoraResolver | None = None
    """Finds a request's LoRA adapters (None: requests naming adapters are refused)."""


class GenerationService(JobReports):
    """Accepts image and video asks as durable jobs and reports on them."""

    def __init__(self, catalog: Catalog, store: JobStore, engine: Engine, hub: CompletionHub, media: JobMedia,
                 files: FilesSettings, queue: StoreSettings, hooks: ServiceHooks = ServiceHooks(),
                 calls: OffLoop | None = None) -> None:
        super().__init__(store, engine, media.inputs, media.outputs, hub, calls)
        self.catalog = catalog
        self.fetcher = media.fetcher
        self.loras = media.loras
        self.max_pixels = files.max_image_pixels
        self.max_side = files.max_image_side
        self.min_free_bytes = int(files.min_free_mb * 1e6)
        self.max_queue = queue.max_queue
        self.retry_after_s = queue.queue_retry_after_s
        self.hooks = hooks

    # ---- accept ------------------------------------------------------------------------
    async def check_quota(self, caller: str | None) -> None:
        """429 quota_exceeded when `caller`'s key has used its jobs for the rolling 24 hours (a fail-fast check
        before any work; the insert checks again in its transaction)."""
        quota = self.hooks.jobs_per_day(caller)
        if caller is None or quota <= 0:
            return
        used, oldest = await self.calls(self.store.jobs_since, caller, time.time() - _DAY_S)
        if used >= quota:
            raise self._quota_exceeded(caller, quota, oldest + _DAY_S - time.time())

    def _quota_exceeded(self, caller: str, quota: int, retry_s: float) -> ApiError:
        self.hooks.on_refused("quota_exceeded")
        retry = max(1, int(retry_s) + 1)
        return ApiError(429, ErrorCode.QUOTA_EXCEEDED, f"key {caller!r} has used its {quota} jobs for the last 24 "
                        f"hours; the next one frees up in {retry} s", None, headers={"Retry-After": str(retry)})

    async def check_capacity(self) -> None:
        """429 queue_full with Retry-After when the bounded queue is full (a fail-fast check before any work for
        the request; the commit checks again atomically); 503 shutting_down while the server drains; 507
        storage_full while finished jobs could not store their outputs (or the data dir is below its free-space
        floor)."""
        if self.hooks.draining():
            self.hooks.on_refused("shutting_down")
            raise ApiError(503, ErrorCode.SHUTTING_DOWN, "the server is shutting down or restarting; retry in "
                           f"{self.retry_after_s} s (queued jobs are kept)", None,
                           headers={"Retry-After": str(self.retry_after_s)})
        free = self.outputs.blobs.free_bytes()
        if self.engine.storage_full or (free is not None and free < self.min_free_bytes):
            self.hooks.on_refused("storage_full")
            raise StorageFull("new tasks")
        if await self.calls(self.store.active_count) >= self.max_queue:
            raise self._queue_full()

    def _queue_full(self) -> ApiError:
        self.hooks.on_refused("queue_full")
        return ApiError(429, ErrorCode.QUEUE_FULL, f"the queue is full ({self.max_queue} jobs waiting or running); "
                        f"retry after {self.retry_after_s} s", None, headers={"Retry-After": str(self.retry_after_s)})

    async def submit_image(self, ask: ImageAsk, idempotency_key: str | None = None,
                           caller: str | None = None) -> tuple[str, GenerationRequest]:
        """Validate, store inputs, commit the job (binding `idempotency_key` to it, owned by the `caller` key),
        wake the engine. Returns (job id, request)."""
        REQUEST_MODEL.set(ask.model[:200])
        await self.check_capacity()
        await self.check_quota(caller)
        spec = self.catalog.get(ask.model)
        check_image_limits(spec, ask)
        fam = family_class(spec.family)
        if ask.size is not None:
            check_image_size(spec, ask)
        params = resolve.image_params(spec, fam, ask, self.hooks.presets(spec.id))
        family_check(fam, params)  # size-independent checks before any download
        params, loras = await self._with_loras(spec.id, spec.family, params, ask, caller)

        items = [*ask.sources, *ask.references] + ([ask.mask] if ask.mask else [])
        images = await self._decode(items, ask.mask)
        n_src, n_ref = len(ask.sources), len(ask.references)
        sources, references = images[:n_src], images[n_src:n_src + n_ref]
        mask = images[-1] if ask.mask else None
        # With no source, the first reference anchors the edit (references alone still condition Kontext).
        if not sources and references:
            sources, references = references[:1], references[1:]
        first = sources[0].size if sources else None
        size = resolve.image_size(ask, params.width, fam.size_multiple, first)
        params = resolve.with_inputs(params, size, len(sources), len(references), first or (0, 0))
        family_check(fam, params)
        admission = self._admit(spec.id, spec.weights, spec.family, params)
        job_id = new_task_id()
        stored = await self._store_inputs(job_id, {"source": sources, "reference": references,
                                                   "mask": [mask] if mask is not None else []})
        request = GenerationRequest(
            model_id=spec.id, weights=spec.weights, family=spec.family, params=params,
            output_format=ask.output_format, source_paths=stored["source"], reference_paths=stored["reference"],
            mask_path=stored["mask"][0] if stored["mask"] else None,
            warnings=self._warnings(ask.warnings, spec.weights), priority=ask.priority, previews=ask.previews,
            start_by=ask.start_by, no_retry=ask.no_retry, output_width=size.output[0],
            output_height=size.output[1],
            asked=_asked(quality=ask.quality or (None if ask.size else spec.default_quality),
                         aspect_ratio=None if ask.size else ask.aspect_ratio, size=ask.size, loras=loras))
        await self._commit(job_id, request, ask, admission, idempotency_key, caller)
        return job_id, request

    async def submit_video(self, ask: VideoAsk, idempotency_key: str | None = None,
                           caller: str | None = None) -> tuple[str, GenerationRequest]:
        """Validate an image-to-video ask, store its frames, commit the job, wake the engine."""
        REQUEST_MODEL.set(ask.model[:200])
        await self.check_capacity()
        await self.check_quota(caller)
        spec = self.catalog.get_video(ask.model)
        fam = family_class(spec.family)
        assert issubclass(fam, VideoFamily)
        resolution, cpu_warnings = resolve.video_tier(spec, ask, self.engine.cpu_only())
        timing = resolve.clip_timing(spec, fam, ask)
        with_audio = [v.id for v in self.catalog.video_specs()
                      if getattr(family_class(v.family), "supports_audio", False)]
        check_video_limits(spec, fam, ask, timing.duration, resolution, timing.fps, with_audio)
        frames = await self._decode(list(ask.frames), None)
        size = resolve.clip_size(ask, resolution, fam.size_multiple, frames[0].size)
        params = resolve.video_params(spec, fam, ask, size, timing, len(frames), self.hooks.presets(spec.id))
        family_check(fam, params)
        params, loras = await self._with_loras(spec.id, spec.family, params, ask, caller)
        admission = self._admit(spec.id, spec.weights, spec.family, params)
        job_id = new_task_id()
        stored = await self._store_inputs(job_id, {"frame": frames})
        request = GenerationRequest(
            model_id=spec.id, weights=spec.weights, family=spec.family, params=params, output_format="mp4",
            source_paths=stored["frame"], warnings=self._warnings(ask.warnings + cpu_warnings, spec.weights),
            priority=ask.priority, previews=ask.previews,
            start_by=ask.start_by, no_retry=ask.no_retry, continues=ask.continues,
            continues_upload=ask.continues_upload, output_width=size.output[0],
            output_height=size.output[1],
            asked=_asked(resolution=resolution, aspect_ratio=ask.aspect_ratio, duration=timing.duration,
                         fps=timing.fps, size=ask.size, loras=loras))
        await self._commit(job_id, request, ask, admission, idempotency_key, caller)
        return job_id, request

    async def _with_loras(self, model_id: str, family: str, params: RenderParams, ask: Ask, caller: str | None
                          ) -> tuple[RenderParams, list[dict[str, object]] | None]:
        """The params with the request's adapters, and what the task records of them (None without any)."""
        if not ask.loras:
            return params, None
        if self.loras is None:
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "this server takes no LoRA adapters",
                           ask.loras[0].field.split("[", 1)[0])
        uses, recorded = await self.loras.resolve(model_id, family, ask.loras, caller)
        return replace(params, loras=uses), recorded

    async def _store_inputs(self, job_id: str, images: dict[str, list[Image.Image]]) -> dict[str, tuple[str, ...]]:
        """Store a job's inputs (off the event loop: encoding and writing take time) and return their references
        by role. All or nothing: on any failure (a full disk) none of them stays behind."""
        def save() -> dict[str, tuple[str, ...]]:
            return {role: tuple(self.inputs.save(job_id, role, i, im) for i, im in enumerate(ims))
                    for role, ims in images.items()}

        try:
            return await asyncio.to_thread(save)
        except BaseException:
            await asyncio.to_thread(self.inputs.discard, job_id)
            raise

    def _admit(self, model_id: str, weights: str, family: str, params: RenderParams) -> Admission:
        try:
            return self.engine.admit(model_id, weights, family, params)
        except ApiError as exc:
            self.hooks.on_refused(str(exc.code))
            raise

    def _warnings(self, warnings: tuple[str, ...], weights: str) -> tuple[str, ...]:
        return warnings + (DEMO_WARNING,) if weights in self.hooks.demo_weights() else warnings

    async def _commit(self, job_id: str, request: GenerationRequest, ask: Ask, admission: Admission,
                      idempotency_key: str | None, caller: str | None) -> None:
        """One transaction: the job, its webhook and dialect note, the queue bound and the key's quota. Within the
        store's deadline or not at all (503 store_busy): the store is told the deadline too, so a job can never be
        committed after its client was told it was not."""
        fam = family_class(request.family)
        quota = self.hooks.jobs_per_day(caller) if caller is not None else 0
        job = NewJob(id=job_id, model=request.model_id, batch_key=fam.batch_key(request.params).encode(),
                     request=request.to_json(), weights=request.weights, priority=request.priority,
                     activation_bytes=admission.activation_bytes, estimate=admission.estimate, owner=caller,
                     webhook=ask.webhook, dialect=ask.dialect_note)
        try:
            created: CreateResult = await self.calls(
                self.store.create, job, max_active=self.max_queue, quota=Quota(quota) if quota > 0 else None,
                idempotency_key=idempotency_key, deadline=time.monotonic() + self.calls.deadline_s,
                deadline_s=self.calls.deadline_s + _STORE_MARGIN_S)
        except BaseException:
            # Refused, busy or full: nothing of the request stays behind. (ReservationLost: the key's job is another
            # request's, which submit_once answers with.)
            await asyncio.to_thread(self.inputs.discard, job_id)
            raise
        if not created:
            await asyncio.to_thread(self.inputs.discard, job_id)
            if created.refused is Refusal.QUOTA_EXCEEDED:
                assert caller is not None
                raise self._quota_exceeded(caller, quota, created.retry_after_s)
            raise self._queue_full()
        p = request.params
        width, height = request.output_size
        steps = fam.denoising_steps(p)
        event(log, "job.accepted", f"accepted {job_id} {request.model_id}: {p.task} {width}x{height}, "
              f"{p.num_images} output(s), {steps} step(s)" + (f", {p.num_frames} frames" if p.num_frames else ""),
              job_id=job_id, model=request.model_id, task=str(p.task), width=width, height=height,
              outputs=p.num_images, steps=steps, frames=p.num_frames or None, key=caller,
              estimate_s=admission.estimate.get("seconds_full_size"))
        self.hooks.on_accepted(job_id)
        self.engine.notify()

    async def _decode(self, items: list[ImageInput], mask: ImageInput | None) -> list[Image.Image]:
        """Fetch all inputs concurrently, then decode them (the mask, if one of them, as greyscale)."""
        blobs = await asyncio.gather(*(self._bytes_of(item) for item in items))
        # Decoding is CPU work; off the event loop so other requests keep flowing.
        return await asyncio.to_thread(
            lambda: [decode_image(b, item.field, self.max_pixels, "L" if item is mask else "RGB", self.max_side)
                     for item, b in zip(items, blobs, strict=True)]
        )

    async def _bytes_of(self, item: ImageInput) -> bytes:
        if item.data is not None:
            if len(item.data) > self.fetcher.limits.max_bytes:
                raise ApiError(413, ErrorCode.IMAGE_TOO_LARGE,
                               f"image is larger than {self.fetcher.limits.max_bytes} bytes", item.field)
            return item.data
        assert item.url is not None
        return await self.fetcher.fetch(item.url, item.field)
