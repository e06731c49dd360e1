"""The dialect-neutral generation service every HTTP dialect calls.

A dialect maps its wire fields to an `ImageAsk` or a `VideoAsk`; this module
validates it against the model's limits, fetches and decodes the images,
resolves size, frames and seeds, stores the inputs, commits the job and wakes
the engine. It knows no wire format and no torch.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from pipelines.base import Family, ParamError, RenderParams, Task
from pipelines.registry import family_class
from pipelines.video_base import VideoFamily
from server.catalog import QUALITY_LONG_SIDE, RESOLUTION_SHORT_SIDE, Catalog, ModelSpec, VideoModelSpec, parse_ratio
from server.engine.completion import CompletionHub
from server.engine.costs import Costs
from server.engine.policy import EVICTION_ORDERS, GB, DeviceState, NeverFits, ResidencyPlan, plan_residency
from server.engine.request import GenerationRequest
from server.engine.sizing import (
    exact_image_size,
    exact_video_size,
    output_size,
    render_size_for,
    render_video_size_for,
    video_size,
)
from server.errors import ApiError, ErrorCode
from server.jobs.store import FINAL_STATES, JobRecord, JobStore, new_task_id
from server.media.decode import decode_image
from server.media.fetch import ImageFetcher
from server.media.storage import InputStore

if TYPE_CHECKING:
    from server.engine.loop import Engine

log = logging.getLogger("darkroom.jobs")

SEED_MAX = 2**32 - 1
MIN_SIDE = 64
"""Smallest output side in pixels: below it an image is a thumbnail of a render, not a render."""
DEMO_WARNING = "this model runs on random demo weights: outputs are noise, not edits"
DRAFT_TIER = "240p"
CPU_SLOW_SHORT_SIDE = 480
"""Video tiers from this short side up take minutes per clip on a CPU (a warning says so)."""
_DAY_S = 86400.0


@dataclass(frozen=True)
class ImageInput:
    """One input image as the client sent it: a URL / data URL, or uploaded bytes. `field` names it in errors."""

    field: str
    url: str | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class ImageAsk:
    """A request for images, in darkroom's own terms."""

    model: str
    prompt: str
    sources: tuple[ImageInput, ...] = ()
    references: tuple[ImageInput, ...] = ()
    mask: ImageInput | None = None
    aspect_ratio: str = "auto"
    quality: str | None = None
    num_images: int | None = None
    seed: int | None = None
    output_format: str = "png"
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    strength: float | None = None
    negative_prompt: str | None = None
    warnings: tuple[str, ...] = ()
    priority: int = 0
    size: tuple[int, int] | None = None
    """An exact output size (dialects that speak in WxH); replaces aspect_ratio and quality."""
    size_field: str = "size"
    num_images_field: str = "num_images"
    """The dialect's name for num_images (n, max_images...), named in errors."""


@dataclass(frozen=True)
class VideoAsk:
    """A request for an image-to-video clip, in darkroom's own terms."""

    model: str
    prompt: str
    frames: tuple[ImageInput, ...]
    duration: int | None = None
    resolution: str | None = None
    aspect_ratio: str = "auto"
    fps: int | None = None
    generate_audio: bool | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    warnings: tuple[str, ...] = ()
    priority: int = 0
    size: tuple[int, int] | None = None
    """An exact clip size (dialects that speak in WxH); replaces resolution and aspect_ratio."""
    size_field: str = "size"


@dataclass(frozen=True)
class Admission:
    """What admission worked out for a job: its activation estimate and the estimate shown on its task."""

    activation_bytes: int
    estimate: dict[str, object]


class GenerationService:
    """Accepts image and video asks as durable jobs and reports on them."""

    def __init__(self, catalog: Catalog, store: JobStore, engine: Engine, fetcher: ImageFetcher,
                 inputs: InputStore, hub: CompletionHub, max_pixels: int, demo_weights: frozenset[str],
                 costs: Costs, max_queue: int = 1000, retry_after_s: int = 10,
                 draining: Callable[[], bool] = lambda: False,
                 jobs_per_day: Callable[[str | None], int] = lambda _caller: 0, max_side: int = 16384) -> None:
        self.catalog = catalog
        self.draining = draining
        self.jobs_per_day = jobs_per_day
        self.costs = costs
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.demo_weights = demo_weights
        self.store = store
        self.engine = engine
        self.fetcher = fetcher
        self.inputs = inputs
        self.hub = hub
        self.max_pixels = max_pixels
        self.max_side = max_side

    # ---- accept ------------------------------------------------------------------------
    def check_quota(self, caller: str | None) -> None:
        """429 quota_exceeded when `caller`'s key has used its jobs for the rolling 24 hours."""
        quota = self.jobs_per_day(caller)
        if caller is None or quota <= 0:
            return
        used, oldest = self.store.jobs_since(caller, time.time() - _DAY_S)
        if used >= quota:
            retry = max(1, int(oldest + _DAY_S - time.time()) + 1)
            raise ApiError(429, ErrorCode.QUOTA_EXCEEDED, f"key {caller!r} has used its {quota} jobs for the last 24 "
                           f"hours; the next one frees up in {retry} s", None, headers={"Retry-After": str(retry)})

    def check_capacity(self) -> None:
        """429 queue_full with Retry-After when the bounded queue is full (a fail-fast check before any work for
        the request; the commit checks again atomically); 503 shutting_down while the server drains."""
        if self.draining():
            raise ApiError(503, ErrorCode.SHUTTING_DOWN, "the server is shutting down or restarting; retry in "
                           f"{self.retry_after_s} s (queued jobs are kept)", None,
                           headers={"Retry-After": str(self.retry_after_s)})
        if self.store.active_count() >= self.max_queue:
            raise self._queue_full()

    def _queue_full(self) -> ApiError:
        return ApiError(429, ErrorCode.QUEUE_FULL, f"the queue is full ({self.max_queue} jobs waiting or running); "
                        f"retry after {self.retry_after_s} s", None, headers={"Retry-After": str(self.retry_after_s)})

    async def submit_image(self, ask: ImageAsk, idempotency_key: str | None = None,
                           caller: str | None = None) -> tuple[str, GenerationRequest]:
        """Validate, store inputs, commit the job (binding `idempotency_key` to it, owned by the `caller` key),
        wake the engine. Returns (job id, request)."""
        self.check_capacity()
        self.check_quota(caller)
        spec = self.catalog.get(ask.model)
        self._check_limits(spec, ask)
        fam = family_class(spec.family)
        if ask.size is not None:
            self._check_size(spec, fam, ask)
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
        seeds = self._seeds(ask.seed, num_images)
        steps = ask.num_inference_steps or spec.defaults.num_inference_steps
        guidance = ask.guidance_scale if ask.guidance_scale is not None else spec.defaults.guidance_scale
        strength = ask.strength if ask.strength is not None else spec.defaults.strength

        # Size-independent checks before any download.
        long_side = (max(render_size_for(*ask.size, fam.size_multiple)) if ask.size
                     else QUALITY_LONG_SIDE[ask.quality or spec.default_quality])
        probe = self._params(task, ask, long_side, long_side, num_images, seeds, steps, guidance, strength)
        self._family_check(fam, probe)

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
        params = self._params(task, ask, width, height, num_images, seeds, steps, guidance, strength,
                              len(sources), len(references))
        self._family_check(fam, params)
        admission = self._admit(spec.id, spec.weights, fam, params)

        job_id = new_task_id()
        request = GenerationRequest(
            model_id=spec.id, weights=spec.weights, family=spec.family, task=task, prompt=ask.prompt,
            width=width, height=height, num_images=num_images, seeds=seeds, num_inference_steps=steps,
            guidance_scale=guidance, strength=strength, output_format=ask.output_format,
            source_paths=tuple(self.inputs.save(job_id, "source", i, im) for i, im in enumerate(sources)),
            reference_paths=tuple(self.inputs.save(job_id, "reference", i, im) for i, im in enumerate(references)),
            mask_path=self.inputs.save(job_id, "mask", 0, mask) if mask is not None else None,
            warnings=self._warnings(ask.warnings, spec.weights), negative_prompt=ask.negative_prompt,
            priority=ask.priority, output_width=out_w, output_height=out_h,
        )
        self._commit(job_id, fam, request, admission, idempotency_key, caller)
        return job_id, request

    async def submit_video(self, ask: VideoAsk, idempotency_key: str | None = None,
                           caller: str | None = None) -> tuple[str, GenerationRequest]:
        """Validate an image-to-video ask, store its frames, commit the job, wake the engine."""
        self.check_capacity()
        self.check_quota(caller)
        spec = self.catalog.get_video(ask.model)
        fam = family_class(spec.family)
        assert issubclass(fam, VideoFamily)
        d = spec.defaults
        duration = d.duration if ask.duration is None else ask.duration
        warnings = ask.warnings
        resolution = ask.resolution or d.resolution
        if ask.size is not None:
            resolution = self._tier_for_size(spec, ask)
        elif ask.resolution is None and self._cpu_only() and DRAFT_TIER in spec.resolutions:
            # A default-size clip takes many minutes on a CPU; the draft tier shows the motion in a fraction.
            resolution = DRAFT_TIER
            warnings += (f"rendering on the CPU: no resolution was given, so the {DRAFT_TIER} draft tier was used "
                         f"instead of the default {d.resolution} (which takes many minutes here); ask for a "
                         "resolution to override",)
        if self._cpu_only() and RESOLUTION_SHORT_SIDE[resolution] >= CPU_SLOW_SHORT_SIDE:
            warnings += (f"rendering on the CPU: a {resolution} clip takes minutes; the {DRAFT_TIER} draft tier is "
                         "much faster",)
        fps = ask.fps or d.fps
        self._check_video_limits(spec, fam, ask, duration, resolution, fps)
        # Unasked, audio follows the model's default where the running family can make it.
        audio = (d.generate_audio and fam.supports_audio) if ask.generate_audio is None else ask.generate_audio
        num_frames = fam.valid_frames(duration * fps)
        steps = ask.num_inference_steps or d.num_inference_steps
        guidance = ask.guidance_scale if ask.guidance_scale is not None else d.guidance_scale
        seeds = self._seeds(ask.seed, 1)
        frames = await self._decode(list(ask.frames), None)
        if ask.size is not None:
            out_w, out_h = ask.size
            width, height = render_video_size_for(out_w, out_h, fam.size_multiple)
        else:
            ratio = frames[0].size if ask.aspect_ratio == "auto" else parse_ratio(ask.aspect_ratio)
            out_w, out_h = exact_video_size(RESOLUTION_SHORT_SIDE[resolution], ratio)
            width, height = video_size(RESOLUTION_SHORT_SIDE[resolution], ratio, fam.size_multiple)
        job_id = new_task_id()
        request = GenerationRequest(
            model_id=spec.id, weights=spec.weights, family=spec.family, task=Task.IMAGE_TO_VIDEO,
            prompt=ask.prompt, width=width, height=height, num_images=1, seeds=seeds, num_inference_steps=steps,
            guidance_scale=guidance, strength=1.0, output_format="mp4",
            source_paths=tuple(self.inputs.save(job_id, "frame", i, im) for i, im in enumerate(frames)),
            warnings=self._warnings(warnings, spec.weights), negative_prompt=ask.negative_prompt,
            num_frames=num_frames, fps=float(fps), generate_audio=audio, priority=ask.priority,
            output_width=out_w, output_height=out_h,
        )
        self._family_check(fam, request.render_params())
        self._commit(job_id, fam, request, self._admit(spec.id, spec.weights, fam, request.render_params()),
                     idempotency_key, caller)
        return job_id, request

    def _cpu_only(self) -> bool:
        """Whether every serving worker is a CPU (renders there take orders of magnitude longer)."""
        return all(w.device == "cpu" for w in self.engine.workers if not w.fault)

    @staticmethod
    def _tier_for_size(spec: VideoModelSpec, ask: VideoAsk) -> str:
        """The smallest listed tier whose short side covers an exact clip size; 422 for sizes never made."""
        assert ask.size is not None
        w, h = ask.size
        tiers = sorted(spec.resolutions, key=RESOLUTION_SHORT_SIDE.__getitem__)
        fits = [t for t in tiers if RESOLUTION_SHORT_SIDE[t] >= min(w, h)]
        if w % 2 or h % 2 or min(w, h) < MIN_SIDE or not fits or max(w, h) > 4 * min(w, h):
            largest = RESOLUTION_SHORT_SIDE[tiers[-1]]
            raise ApiError(422, ErrorCode.UNSUPPORTED_RESOLUTION, (
                f"{spec.id} makes clips with even sides, the short side from {MIN_SIDE} to {largest} px, at most "
                f"4:1 (H.264 needs even sides); got {w}x{h}"), ask.size_field)
        return fits[0]

    def _check_video_limits(self, spec: VideoModelSpec, fam: type[VideoFamily], ask: VideoAsk, duration: int,
                            resolution: str, fps: int) -> None:
        if not ask.frames:
            raise ApiError(422, ErrorCode.MISSING_FIELD, "image-to-video needs a first frame in image_urls",
                           "image_urls")
        most = 2 if fam.supports_last_frame else 1
        if len(ask.frames) > most:
            what = "a first and a last frame" if most == 2 else "one first frame (no last frame)"
            raise ApiError(422, ErrorCode.TOO_MANY_IMAGES, f"{spec.id} takes {what} in image_urls; "
                           f"got {len(ask.frames)} images", "image_urls")
        if duration not in spec.durations:
            raise ApiError(422, ErrorCode.UNSUPPORTED_DURATION, f"{spec.id} makes clips of "
                           f"{', '.join(f'{x}s' for x in spec.durations)}; got {duration}s", "duration")
        if resolution not in spec.resolutions:
            raise ApiError(422, ErrorCode.UNSUPPORTED_RESOLUTION, f"{spec.id} supports resolution "
                           f"{', '.join(spec.resolutions)}; got {resolution[:20]!r}", "resolution")
        if ask.aspect_ratio not in spec.aspect_ratios:
            raise ApiError(422, ErrorCode.UNSUPPORTED_ASPECT_RATIO, f"{spec.id} supports aspect_ratio "
                           f"{', '.join(spec.aspect_ratios)}; got {ask.aspect_ratio[:20]!r}", "aspect_ratio")
        if fps not in spec.fps:
            raise ApiError(422, ErrorCode.INVALID_REQUEST,
                           f"{spec.id} renders at {', '.join(map(str, spec.fps))} fps", "fps")
        if ask.generate_audio and not fam.supports_audio:
            with_audio = [v.id for v in self.catalog.video_specs()
                          if getattr(family_class(v.family), "supports_audio", False)]
            hint = f"; models with audio: {', '.join(with_audio)}" if with_audio else ""
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE,
                           f"{spec.id} makes silent video; send generate_audio=false{hint}", "generate_audio")

    @staticmethod
    def _seeds(seed: int | None, n: int) -> tuple[int, ...]:
        base = seed if seed is not None else secrets.randbelow(SEED_MAX + 1)
        return tuple((base + i) % (SEED_MAX + 1) for i in range(n))

    def _warnings(self, warnings: tuple[str, ...], weights: str) -> tuple[str, ...]:
        return warnings + (DEMO_WARNING,) if weights in self.demo_weights else warnings

    def _admit(self, model_id: str, weights: str, fam: type[Family], params: RenderParams) -> Admission:
        """The job's estimate on the device it fits best; 422 when no device can hold it even with offload."""
        activation = fam.activation_bytes(params, 1)
        best: tuple[ResidencyPlan, str, int | None] | None = None
        need = have = 0
        for worker in self.engine.workers:
            if worker.fault:
                continue
            empty = DeviceState(worker.name, worker.budget)
            try:
                plan = plan_residency(empty, worker.footprint(weights), activation, {}, EVICTION_ORDERS["lru"],
                                      self.costs.transfer)
            except NeverFits as exc:
                need, have = max(need, exc.need), max(have, exc.have)
                continue
            if best is None or plan.peak_bytes < best[0].peak_bytes:
                best = (plan, worker.device, worker.budget)
        if best is None:
            raise ApiError(422, ErrorCode.INSUFFICIENT_VRAM, (
                f"{model_id} at {params.width}x{params.height} needs {need / GB:.2f} GB of GPU memory even with "
                f"offload, and the largest GPU budget here is {have / GB:.2f} GB; lower the size, num_images or "
                "num_frames"))
        plan, device, budget = best
        cost = self.costs.families.get(fam.name)
        seconds = None if cost is None else cost.job_seconds(params.num_inference_steps, params.width * params.height,
                                                             params.num_frames, params.num_images)
        estimate = {
            "peak_gb": round(plan.peak_bytes / GB, 3),
            "device": device,
            "device_budget_gb": None if budget is None else round(budget / GB, 1),
            "placement": plan.placement.value,
            "seconds_full_size": None if seconds is None else round(seconds + plan.load_s, 1),
            "basis": "weights from safetensors headers; activations and seconds from the family formula and "
                     "configs/costs.toml (full-size bf16 on one H100; uncalibrated)",
        }
        return Admission(activation, estimate)

    def _commit(self, job_id: str, fam: type[Family], request: GenerationRequest, admission: Admission,
                idempotency_key: str | None = None, caller: str | None = None) -> None:
        batch_key = "|".join(str(part) for part in fam.batch_key(request.render_params()))
        accepted = self.store.create(job_id, request.model_id, batch_key, request.to_json(), weights=request.weights,
                                     priority=request.priority, activation_bytes=admission.activation_bytes,
                                     estimate=admission.estimate, max_active=self.max_queue,
                                     idempotency_key=idempotency_key, owner=caller)
        if not accepted:
            self.inputs.discard(job_id)
            raise self._queue_full()
        log.info("accepted %s %s: %s %dx%d, %d output(s), %d step(s)%s", job_id, request.model_id, request.task,
                 *request.output_size, request.num_images, request.num_inference_steps,
                 f", {request.num_frames} frames" if request.num_frames else "")
        self.engine.notify()

    @staticmethod
    def _check_size(spec: ModelSpec, fam: type[Family], ask: ImageAsk) -> None:
        """Refuse only sizes the model can never make: any other size is rendered on the model's grid and
        cropped or resized to exactly what was asked (server/media/fit.py)."""
        assert ask.size is not None
        w, h = ask.size
        largest = max(QUALITY_LONG_SIDE[q] for q in spec.quality)
        ratios = [parse_ratio(r) for r in spec.aspect_ratios if r != "auto"]
        widest = max([4.0, *(max(r) / min(r) for r in ratios)])
        if min(w, h) < MIN_SIDE or max(w, h) > largest or max(w, h) > widest * min(w, h):
            raise ApiError(422, ErrorCode.INVALID_REQUEST, (
                f"{spec.id} makes sizes from {MIN_SIDE} px up to {largest} px a side, at most {widest:g}:1; "
                f"got {w}x{h}"), ask.size_field)

    def _check_limits(self, spec: ModelSpec, ask: ImageAsk) -> None:
        if len(ask.sources) > spec.max_source_images:
            raise ApiError(422, ErrorCode.TOO_MANY_IMAGES,
                           f"{spec.id} takes at most {spec.max_source_images} source image(s) in image_urls; "
                           f"got {len(ask.sources)}", "image_urls")
        if len(ask.references) > spec.max_reference_images:
            raise ApiError(422, ErrorCode.TOO_MANY_IMAGES,
                           f"{spec.id} takes at most {spec.max_reference_images} reference image(s); "
                           f"got {len(ask.references)}", "reference_images")
        if ask.size is None and ask.aspect_ratio not in spec.aspect_ratios:
            raise ApiError(422, ErrorCode.UNSUPPORTED_ASPECT_RATIO,
                           f"{spec.id} supports aspect_ratio {', '.join(spec.aspect_ratios)}; got "
                           f"{ask.aspect_ratio[:20]!r}", "aspect_ratio")
        if ask.quality is not None and ask.quality not in spec.quality:
            raise ApiError(422, ErrorCode.UNSUPPORTED_QUALITY,
                           f"{spec.id} supports quality {', '.join(spec.quality)}; got {ask.quality[:20]!r}",
                           "quality")
        if ask.num_images is not None and not 1 <= ask.num_images <= spec.max_num_images:
            raise ApiError(422, ErrorCode.INVALID_REQUEST,
                           f"{spec.id} makes 1 to {spec.max_num_images} images per request; got "
                           f"{ask.num_images}", ask.num_images_field)
        if ask.output_format not in spec.output_formats:
            raise ApiError(422, ErrorCode.INVALID_REQUEST,
                           f"output_format must be one of {', '.join(spec.output_formats)}", "output_format")

    @staticmethod
    def _params(task: Task, ask: ImageAsk, width: int, height: int, num_images: int, seeds: tuple[int, ...],
                steps: int, guidance: float, strength: float, n_src: int = 0, n_ref: int = 0) -> RenderParams:
        return RenderParams(task=task, prompt=ask.prompt, width=width, height=height, num_images=num_images,
                            seeds=seeds, num_inference_steps=steps, guidance_scale=guidance, strength=strength,
                            num_sources=n_src, num_references=n_ref, negative_prompt=ask.negative_prompt)

    @staticmethod
    def _family_check(fam: type[Family], params: RenderParams) -> None:
        try:
            fam.check(params)
        except ParamError as exc:
            code = ErrorCode.UNSUPPORTED_FEATURE if exc.unsupported else ErrorCode.INVALID_REQUEST
            raise ApiError(422, code, exc.message, exc.field) from None

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
    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None for an id this server never issued."""
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending job, or stop a running one at its next step; False when it had already finished."""
        return self.engine.cancel(job_id)

    async def wait(self, job_id: str, timeout: float) -> JobRecord:
        """Wait until the job is final or `timeout` passes; returns its latest record."""
        event = self.hub.register(job_id)
        try:
            record = self.store.get(job_id)
            if record is not None and record.status not in FINAL_STATES:
                try:
                    await asyncio.wait_for(event.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            self.hub.unregister(job_id, event)
        record = self.store.get(job_id)
        assert record is not None
        return record
