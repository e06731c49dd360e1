"""The dialect-neutral generation service every HTTP dialect calls.

A dialect maps its wire fields to an `ImageAsk` or a `VideoAsk` (server/asks.py); this module checks it
against the model's limits (server/limits.py), fetches and decodes the images, resolves size, frames and
seeds, stores the inputs, asks the engine for admission, commits the job (with its webhook, the queue bound and
the key's quota in one transaction) and wakes the engine. It knows no wire format and no torch.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from PIL import Image

from pipelines.base import RenderParams, Task
from pipelines.registry import family_class
from pipelines.video_base import VideoFamily
from server.asks import Ask, ImageAsk, ImageInput, VideoAsk
from server.catalog import QUALITY_LONG_SIDE, RESOLUTION_SHORT_SIDE, Catalog, parse_ratio
from server.engine.admission import Admission
from server.engine.completion import CompletionHub
from server.engine.request import GenerationRequest
from server.engine.results import output_names
from server.engine.sizing import (
    exact_image_size,
    exact_video_size,
    output_size,
    render_size_for,
    render_video_size_for,
    video_size,
)
from server.errors import ApiError, ErrorCode
from server.faults import StorageFull, StoreBusy
from server.jobs.offloop import OffLoop
from server.jobs.store import (
    FINAL_STATES,
    CreateResult,
    JobRecord,
    JobStatus,
    JobStore,
    NewJob,
    Quota,
    Refusal,
    new_task_id,
)
from server.limits import (
    check_image_limits,
    check_image_size,
    check_video_limits,
    family_check,
    tier_for_video_size,
)
from server.logs import event
from server.media.decode import decode_image
from server.media.fetch import ImageFetcher
from server.media.storage import InputStore, OutputStore
from server.metrics import REQUEST_MODEL

if TYPE_CHECKING:
    from server.engine.loop import Engine

__all__ = ["GenerationService", "ImageAsk", "ImageInput", "VideoAsk", "SEED_MAX"]

_STORE_POLL_S = 1.0
_STORE_MARGIN_S = 1.0
"""How much longer than the store's own deadline the event loop waits for a commit (the store gives up first)."""
log = logging.getLogger("darkroom.jobs")

SEED_MAX = 2**32 - 1
DEMO_WARNING = "this model runs on random demo weights: outputs are noise, not edits"
DRAFT_TIER = "240p"
CPU_SLOW_SHORT_SIDE = 480
"""Video tiers from this short side up take minutes per clip on a CPU (a warning says so)."""
_DAY_S = 86400.0


def _asked(**choices: object) -> dict[str, object]:
    """The client's size choices as recorded on the job (unset ones left out)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in choices.items() if v is not None}


class GenerationService:
    """Accepts image and video asks as durable jobs and reports on them."""

    def __init__(self, catalog: Catalog, store: JobStore, engine: Engine, fetcher: ImageFetcher,
                 inputs: InputStore, outputs: OutputStore, hub: CompletionHub, max_pixels: int,
                 demo_weights: Callable[[], frozenset[str]],
                 max_queue: int = 1000, retry_after_s: int = 10, draining: Callable[[], bool] = lambda: False,
                 jobs_per_day: Callable[[str | None], int] = lambda _caller: 0, max_side: int = 16384,
                 on_accepted: Callable[[str], None] = lambda _job_id: None,
                 presets: Callable[[str], str] = lambda _model_id: "",
                 on_refused: Callable[[str], None] = lambda _reason: None,
                 calls: OffLoop | None = None, min_free_bytes: int = 0) -> None:
        self.catalog = catalog
        self.calls = calls or OffLoop()
        self.min_free_bytes = min_free_bytes
        """Every store call made from the event loop goes through here (threads of its own, a deadline)."""
        self.draining = draining
        self.jobs_per_day = jobs_per_day
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.demo_weights = demo_weights
        self.store = store
        self.engine = engine
        self.fetcher = fetcher
        self.inputs = inputs
        self.outputs = outputs
        self.hub = hub
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.on_accepted = on_accepted
        self.presets = presets
        self.on_refused = on_refused
        """Called with the reason (queue_full, quota_exceeded, insufficient_vram, shutting_down) of each refusal."""
        """Model id -> its step-cache preset (configs/acceleration.toml), carried on the render parameters."""

    # ---- accept ------------------------------------------------------------------------
    async def check_quota(self, caller: str | None) -> None:
        """429 quota_exceeded when `caller`'s key has used its jobs for the rolling 24 hours (a fail-fast check
        before any work; the insert checks again in its transaction)."""
        quota = self.jobs_per_day(caller)
        if caller is None or quota <= 0:
            return
        used, oldest = await self.calls(self.store.jobs_since, caller, time.time() - _DAY_S)
        if used >= quota:
            raise self._quota_exceeded(caller, quota, oldest + _DAY_S - time.time())

    def _quota_exceeded(self, caller: str, quota: int, retry_s: float) -> ApiError:
        self.on_refused("quota_exceeded")
        retry = max(1, int(retry_s) + 1)
        return ApiError(429, ErrorCode.QUOTA_EXCEEDED, f"key {caller!r} has used its {quota} jobs for the last 24 "
                        f"hours; the next one frees up in {retry} s", None, headers={"Retry-After": str(retry)})

    async def check_capacity(self) -> None:
        """429 queue_full with Retry-After when the bounded queue is full (a fail-fast check before any work for
        the request; the commit checks again atomically); 503 shutting_down while the server drains; 507
        storage_full while finished jobs could not store their outputs (or the data dir is below its free-space
        floor)."""
        if self.draining():
            self.on_refused("shutting_down")
            raise ApiError(503, ErrorCode.SHUTTING_DOWN, "the server is shutting down or restarting; retry in "
                           f"{self.retry_after_s} s (queued jobs are kept)", None,
                           headers={"Retry-After": str(self.retry_after_s)})
        free = self.outputs.blobs.free_bytes()
        if self.engine.storage.closed_by is not None or (free is not None and free < self.min_free_bytes):
            self.on_refused("storage_full")
            raise StorageFull("new tasks")
        if await self.calls(self.store.active_count) >= self.max_queue:
            raise self._queue_full()

    def _queue_full(self) -> ApiError:
        self.on_refused("queue_full")
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
        if ask.strength is not None and "strength" not in fam.edit_controls():
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, f"{spec.id} does not use strength (its edits are "
                           "instruction-based); remove strength, or add a mask_url where the model supports one",
                           "strength")
        if ask.mask and Task.INPAINT not in fam.tasks:
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, f"{spec.id} takes no mask (it edits from the "
                           "instruction alone); remove mask_url or use a model that lists mask_url in editControls",
                           "mask_url")
        task = Task.INPAINT if ask.mask else Task.EDIT if (ask.sources or ask.references) else Task.GENERATE
        if task is Task.INPAINT and not ask.sources:
            raise ApiError(422, ErrorCode.MISSING_FIELD, "a mask needs a source image in image_urls", "image_urls")
        num_images = ask.num_images or spec.default_num_images
        long_side = (max(render_size_for(*ask.size, fam.size_multiple)) if ask.size
                     else QUALITY_LONG_SIDE[ask.quality or spec.default_quality])
        d = spec.defaults
        params = RenderParams(
            task=task, prompt=ask.prompt, width=long_side, height=long_side, num_images=num_images,
            seeds=self._seeds(ask.seed, num_images), num_inference_steps=ask.num_inference_steps or d.num_inference_steps,
            guidance_scale=d.guidance_scale if ask.guidance_scale is None else ask.guidance_scale,
            strength=d.strength if ask.strength is None else ask.strength, negative_prompt=ask.negative_prompt,
            preset=self.presets(spec.id))
        family_check(fam, params)  # size-independent checks before any download

        items = [*ask.sources, *ask.references] + ([ask.mask] if ask.mask else [])
        images = await self._decode(items, ask.mask)
        n_src, n_ref = len(ask.sources), len(ask.references)
        sources, references = images[:n_src], images[n_src:n_src + n_ref]
        mask = images[-1] if ask.mask else None
        # With no source, the first reference anchors the edit (references alone still condition Kontext).
        if not sources and references:
            sources, references = references[:1], references[1:]
        if ask.size:
            out_w, out_h = ask.size
            width, height = render_size_for(out_w, out_h, fam.size_multiple)
        else:
            ratio = (sources[0].size if sources else (1, 1)) if ask.aspect_ratio == "auto" else parse_ratio(
                ask.aspect_ratio)
            out_w, out_h = exact_image_size(long_side, ratio)
            width, height = output_size(long_side, ratio, fam.size_multiple)
        params = replace(params, width=width, height=height, num_sources=len(sources),
                         num_references=len(references), source_size=sources[0].size if sources else (0, 0))
        family_check(fam, params)
        admission = self._admit(spec.id, spec.weights, spec.family, params)
        job_id = new_task_id()
        stored = await self._store_inputs(job_id, {"source": sources, "reference": references,
                                                   "mask": [mask] if mask is not None else []})
        request = GenerationRequest(
            model_id=spec.id, weights=spec.weights, family=spec.family, params=params,
            output_format=ask.output_format, source_paths=stored["source"], reference_paths=stored["reference"],
            mask_path=stored["mask"][0] if stored["mask"] else None,
            warnings=self._warnings(ask.warnings, spec.weights), priority=ask.priority, output_width=out_w,
            output_height=out_h, asked=_asked(quality=ask.quality or (None if ask.size else spec.default_quality),
                                              aspect_ratio=None if ask.size else ask.aspect_ratio, size=ask.size),
        )
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
        d = spec.defaults
        duration = d.duration if ask.duration is None else ask.duration
        warnings = ask.warnings
        resolution = ask.resolution or d.resolution
        if ask.size is not None:
            resolution = tier_for_video_size(spec, ask)
        elif ask.resolution is None and self.engine.cpu_only() and DRAFT_TIER in spec.resolutions:
            # A default-size clip takes many minutes on a CPU; the draft tier shows the motion in a fraction.
            resolution = DRAFT_TIER
            warnings += (f"rendering on the CPU: no resolution was given, so the {DRAFT_TIER} draft tier was used "
                         f"instead of the default {d.resolution} (which takes many minutes here); ask for a "
                         "resolution to override",)
        if self.engine.cpu_only() and RESOLUTION_SHORT_SIDE.get(resolution, 0) >= CPU_SLOW_SHORT_SIDE:
            warnings += (f"rendering on the CPU: a {resolution} clip takes minutes; the {DRAFT_TIER} draft tier is "
                         "much faster",)
        fps = ask.fps or d.fps
        with_audio = [v.id for v in self.catalog.video_specs() if getattr(family_class(v.family), "supports_audio",
                                                                           False)]
        check_video_limits(spec, fam, ask, duration, resolution, fps, with_audio)
        # Unasked, audio follows the model's default where the running family can make it.
        audio = (d.generate_audio and fam.supports_audio) if ask.generate_audio is None else ask.generate_audio
        frames = await self._decode(list(ask.frames), None)
        if ask.size is not None:
            out_w, out_h = ask.size
            width, height = render_video_size_for(out_w, out_h, fam.size_multiple)
        else:
            ratio = frames[0].size if ask.aspect_ratio == "auto" else parse_ratio(ask.aspect_ratio)
            out_w, out_h = exact_video_size(RESOLUTION_SHORT_SIDE[resolution], ratio)
            width, height = video_size(RESOLUTION_SHORT_SIDE[resolution], ratio, fam.size_multiple)
        params = RenderParams(
            task=Task.IMAGE_TO_VIDEO, prompt=ask.prompt, width=width, height=height, num_images=1,
            seeds=self._seeds(ask.seed, 1), num_inference_steps=ask.num_inference_steps or d.num_inference_steps,
            guidance_scale=d.guidance_scale if ask.guidance_scale is None else ask.guidance_scale, strength=1.0,
            num_sources=len(frames), negative_prompt=ask.negative_prompt,
            num_frames=fam.valid_frames(duration * fps), fps=float(fps), generate_audio=audio,
            preset=self.presets(spec.id))
        family_check(fam, params)
        admission = self._admit(spec.id, spec.weights, spec.family, params)
        job_id = new_task_id()
        stored = await self._store_inputs(job_id, {"frame": frames})
        request = GenerationRequest(
            model_id=spec.id, weights=spec.weights, family=spec.family, params=params, output_format="mp4",
            source_paths=stored["frame"],
            warnings=self._warnings(warnings, spec.weights), priority=ask.priority, output_width=out_w,
            output_height=out_h, asked=_asked(resolution=resolution, aspect_ratio=ask.aspect_ratio, duration=duration,
                                              fps=fps, size=ask.size),
        )
        await self._commit(job_id, request, ask, admission, idempotency_key, caller)
        return job_id, request

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
            self.on_refused(str(exc.code))
            raise

    @staticmethod
    def _seeds(seed: int | None, n: int) -> tuple[int, ...]:
        base = seed if seed is not None else secrets.randbelow(SEED_MAX + 1)
        return tuple((base + i) % (SEED_MAX + 1) for i in range(n))

    def _warnings(self, warnings: tuple[str, ...], weights: str) -> tuple[str, ...]:
        return warnings + (DEMO_WARNING,) if weights in self.demo_weights() else warnings

    async def _commit(self, job_id: str, request: GenerationRequest, ask: Ask, admission: Admission,
                      idempotency_key: str | None, caller: str | None) -> None:
        """One transaction: the job, its webhook and dialect note, the queue bound and the key's quota. Within the
        store's deadline or not at all (503 store_busy): the store is told the deadline too, so a job can never be
        committed after its client was told it was not."""
        fam = family_class(request.family)
        quota = self.jobs_per_day(caller) if caller is not None else 0
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
        self.on_accepted(job_id)
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

    # ---- report ------------------------------------------------------------------------
    async def get(self, job_id: str, caller: str | None = None) -> JobRecord | None:
        """The job, or None for an id this server never issued and for another key's job: a task is visible only
        to the key that created it (jobs made with auth off are everyone's)."""
        record = await self.calls(self.store.get, job_id)
        return record if record is not None and record.owner in (None, caller) else None

    async def list(self, caller: str | None, limit: int, before: tuple[float, str] | None = None,
                   model: str | None = None, status: JobStatus | None = None) -> list[JobRecord]:
        """`caller`'s tasks, newest first (see JobStore.list_jobs)."""
        return await self.calls(self.store.list_jobs, caller, limit, before, model, status)

    async def delete(self, job_id: str) -> bool:
        """Remove a finished job with its outputs and inputs; False when it is still pending or running."""
        record = await self.calls(self.store.get, job_id)
        if record is None or record.status not in FINAL_STATES:
            return False
        if record.result:
            await asyncio.to_thread(self.outputs.remove, output_names(record.result))
        await asyncio.to_thread(self.inputs.discard, job_id)
        return await self.calls(self.store.delete, job_id)

    async def input_bytes(self, record: JobRecord, name: str) -> bytes | None:
        """One of a job's stored inputs by file name (`source-0.png`...), or None."""
        req = record.request
        refs = [*req.get("source_paths", ()), *req.get("reference_paths", ()),
                *([req["mask_path"]] if req.get("mask_path") else [])]
        ref = next((r for r in refs if r.rsplit("/", 1)[-1] == name), None)
        if ref is None:
            return None
        try:
            return await asyncio.to_thread(self.inputs.read, ref)
        except OSError:
            return None

    async def queue_position(self, job_id: str) -> int | None:
        """0-based position among pending jobs (None once it runs or finished, or while the store is busy: it is
        shown beside answers that must not fail for it, such as an accepted submission's)."""
        try:
            return await self.calls(self.store.queue_position, job_id)
        except StoreBusy:
            return None

    async def cancel(self, job_id: str) -> bool:
        """Cancel a pending job, or stop a running one at its next step; False when it had already finished."""
        return await self.calls(self.engine.cancel, job_id)

    async def job_counts(self) -> dict[str, int]:
        """Jobs per status."""
        return await self.calls(self.store.counts)

    async def queue_by_weights(self) -> dict[str, int]:
        """Pending jobs per weights name."""
        return await self.calls(self.store.pending_by_weights)

    # ---- idempotency keys (server/api/idempotency.py) --------------------------------------------
    async def reserve_key(self, key: str, body_sha: str, stale_after_s: float) -> tuple[bool, str | None, str]:
        """See JobStore.reserve_idempotency_key."""
        return await self.calls(self.store.reserve_idempotency_key, key, body_sha, stale_after_s)

    async def touch_key(self, key: str) -> None:
        """See JobStore.touch_idempotency_key."""
        await self.calls(self.store.touch_idempotency_key, key)

    async def release_key(self, key: str) -> None:
        """See JobStore.release_idempotency_key."""
        await self.calls(self.store.release_idempotency_key, key)

    async def wait(self, job_id: str, timeout: float) -> JobRecord:
        """Wait until the job is final or `timeout` passes; returns its latest record."""
        event = self.hub.register(job_id)
        deadline = time.monotonic() + timeout
        try:
            # The hub wakes us when this process's engine finishes the job; the store is read every second too,
            # for jobs another process runs (a shared store: the engine may live in another front end).
            while (left := deadline - time.monotonic()) > 0:
                record = await self._peek(job_id)
                if record is not None and record.status in FINAL_STATES:
                    break
                try:
                    await asyncio.wait_for(event.wait(), min(left, _STORE_POLL_S))
                    break
                except TimeoutError:
                    continue
        finally:
            self.hub.unregister(job_id, event)
        # The job is accepted: a store busy for a moment must not turn this answer into an error.
        record = await self.calls(self.store.get, job_id, deadline_s=self.calls.deadline_s * 3)
        assert record is not None
        return record

    async def _peek(self, job_id: str) -> JobRecord | None:
        """The job as stored now, or None while the store is busy (a waiter just looks again later)."""
        try:
            return await self.calls(self.store.get, job_id)
        except StoreBusy:
            return None
