"""fal's queue protocol: POST /fal-ai/<model> -> request_id + status/response/cancel URLs; and the synchronous
variant at /sync/fal-ai/<model> (fal.run). Model paths map through configs/dialects.toml [fal].

fal-client hard-codes https://fal.run, so clients speak this protocol over plain HTTP with the base URL
replaced: queue.fal.run -> darkroom, fal.run -> darkroom/sync.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from compare.clients import FalClient
from server.api.auth import caller
from server.api.dialect import Dialect, FieldPolicy
from server.api.dialect_io import (
    base_url,
    ctx_of,
    failure,
    file_b64,
    file_size,
    json_object,
    outputs,
    record_or_404,
    validated,
    wait_done,
    watch,
)
from server.api.lora_fields import FalLora, parse_list, refs_from_paths
from server.api.openapi_doc import json_body
from server.api.tasks import preview_data_url
from server.asks import ImageAsk, ImageInput, VideoAsk
from server.errors import ApiError, ErrorCode
from server.jobs.store import FINAL_STATES, JobRecord, JobStatus
from server.jobs.view import JobView
from server.resolve import SEED_MAX

router = APIRouter()

# fal's named sizes -> (aspect ratio, quality tier); auto_2K/auto_4K keep the source's aspect.
IMAGE_SIZES = {"square_hd": ("1:1", "1K"), "square": ("1:1", "512"), "portrait_4_3": ("3:4", "1K"),
               "portrait_16_9": ("9:16", "1K"), "landscape_4_3": ("4:3", "1K"), "landscape_16_9": ("16:9", "1K"),
               "auto": ("auto", None), "auto_2K": ("auto", "2K"), "auto_4K": ("auto", "4K")}
RESOLUTIONS = {"0.5K": "512", "512": "512", "1K": "1K", "2K": "2K", "4K": "4K"}

# fal's edit endpoints refuse a request without their image field; their text-to-image siblings have other paths.
REQUIRED_IMAGES = {
    "fal-ai/flux-pro/kontext": "image_url",
    "fal-ai/flux-pro/kontext/max": "image_url",
    "fal-ai/flux-kontext/dev": "image_url",
    "fal-ai/nano-banana/edit": "image_urls",
    "fal-ai/nano-banana-2/edit": "image_urls",
    "fal-ai/nano-banana-pro/edit": "image_urls",
    "fal-ai/bytedance/seedream/v4/edit": "image_urls",
}

FIELD_POLICY = {
    "prompt": "mapped: prompt",
    "image_url": "mapped: the source image (URL or data URI)",
    "image_urls": "mapped: source images, then reference images beyond the model's source limit",
    "num_images": "mapped: num_images",
    "max_images": "mapped: num_images (Seedream's multi-output emulated by seeds)",
    "seed": "mapped: seed",
    "output_format": "mapped: output_format",
    "aspect_ratio": "mapped: aspect_ratio",
    "image_size": "mapped: named sizes -> aspect ratio + tier; {width,height} -> exact size",
    "resolution": "mapped: quality tier for images (0.5K..4K), resolution for video (480p..1080p)",
    "guidance_scale": "mapped: guidance_scale",
    "num_inference_steps": "mapped: num_inference_steps",
    "negative_prompt": "mapped: negative_prompt",
    "sync_mode": "mapped: outputs as data URIs instead of URLs",
    "duration": "mapped: video duration ('8s')",
    "generate_audio": "mapped: generate_audio",
    "num_frames": "mapped: video duration = num_frames / 16 fps (Wan's rate on fal)",
    "safety_tolerance": "warned: no safety filter runs locally",
    "enable_safety_checker": "warned when true: no safety checker runs locally",
    "enhance_prompt": "refused when true (unsupported_feature): no prompt rewriting offline",
    "enhance_prompt_mode": "warned: no prompt rewriting offline",
    "enable_web_search": "refused when true (unsupported_feature): offline",
    "thinking_level": "warned: the stand-ins do not reason before drawing",
    "loras": "mapped: LoRA adapters [{path (URL or library id), scale}], on ids whose family takes them",
    "previews": "mapped: darkroom extension, live previews of the forming image in the status stream "
                "(GET .../requests/{id}/status/stream) and the native task's preview",
}

# fal's platform headers (https://docs.fal.ai/documentation/model-apis/common-parameters), as darkroom treats them.
HEADER_POLICY = {
    "X-Fal-Request-Timeout": "mapped: start deadline in seconds (> 0.1); a request no worker has started by then fails "
                             "with 504, X-Fal-Error-Type request_timeout and X-Fal-Request-Timeout-Type user",
    "x-fal-no-retry": "mapped (1/true/yes): a failure around the render fails the request at once instead of being "
                      "retried (DARKROOM_JOB_MAX_ATTEMPTS otherwise)",
    "X-Fal-Store-IO": "warned: darkroom keeps each request locally for DARKROOM_RETENTION_HOURS (the queue needs it "
                      "to answer status and result); nothing is sent anywhere",
    "X-Fal-Object-Lifecycle-Preference": "warned: output files live for DARKROOM_RETENTION_HOURS",
    "x-fal-queue-priority": "mapped: `normal` (what fal's clients send on every submit) is the default order; `low` "
                            "is warned and served as normal (darkroom's own `priority` extension orders the queue)",
    "x-fal-runner-hint": "warned: one engine serves every request",
}
_HEADER_WARNINGS = {
    "x-fal-store-io": "X-Fal-Store-IO: ignored; the request is kept locally for the retention period",
    "x-fal-object-lifecycle-preference": "X-Fal-Object-Lifecycle-Preference: ignored; files live for the retention "
                                         "period",
    "x-fal-runner-hint": "x-fal-runner-hint: ignored; one engine serves every request",
}
_TRUE = ("1", "true", "yes")


class FalBody(BaseModel):
    """The union of the inputs of the fal endpoints darkroom answers (each model uses its subset)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    image_url: str | None = Field(None, max_length=20_000_000)
    image_urls: list[str] = Field(default_factory=list, max_length=32)
    # The upper bound is the id's own, checked by the service (which names it; a schema bound here would not).
    num_images: int | None = Field(None, ge=1)
    max_images: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    output_format: str = "png"
    aspect_ratio: str | None = Field(None, max_length=20)
    image_size: str | dict[str, int] | None = None
    resolution: str | None = Field(None, max_length=10)
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)
    num_inference_steps: int | None = Field(None, ge=1, le=200)
    negative_prompt: str | None = Field(None, max_length=4000)
    sync_mode: bool = False
    duration: str | int | None = None
    generate_audio: bool | None = None
    num_frames: int | None = Field(None, ge=9, le=241)
    safety_tolerance: str | int | None = None
    enable_safety_checker: bool | None = None
    enhance_prompt: bool | None = None
    enhance_prompt_mode: str | None = None
    enable_web_search: bool | None = None
    thinking_level: str | None = None
    loras: list[FalLora] | None = Field(None, max_length=4)
    previews: bool = False

    @field_validator("loras", mode="before")
    @classmethod
    def _loras_json(cls, v: object) -> object:
        return parse_list(v)

    @field_validator("output_format")
    @classmethod
    def _format(cls, v: str) -> str:
        v = {"jpg": "jpeg"}.get(v, v)
        if v not in ("png", "jpeg", "webp"):
            raise ValueError("output_format must be png, jpeg or webp")
        return v


def _warnings_and_refusals(body: FalBody) -> list[str]:
    if body.enhance_prompt:
        raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "prompt enhancement needs a hosted language model; send "
                       "enhance_prompt=false", "enhance_prompt")
    if body.enable_web_search:
        raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "web search cannot run offline; send "
                       "enable_web_search=false", "enable_web_search")
    warnings = []
    if body.safety_tolerance is not None:
        warnings.append("safety_tolerance: no safety filter runs on this local server")
    if body.enable_safety_checker:
        warnings.append("enable_safety_checker: no safety checker runs on this local server")
    if body.enhance_prompt_mode is not None:
        warnings.append("enhance_prompt_mode: no prompt rewriting offline")
    if body.thinking_level is not None:
        warnings.append("thinking_level: the local model does not reason before drawing")
    return warnings


def _image_ask(model: str, body: FalBody, ctx: Any, warnings: list[str]) -> ImageAsk:
    spec = ctx.catalog.get(model)
    urls = ([body.image_url] if body.image_url else []) + body.image_urls
    n_src = min(len(urls), spec.max_source_images) if spec.max_source_images else 0
    field = "image_url" if body.image_url else "image_urls"
    sources = [ImageInput(field=f"{field}[{i}]" if i else field, url=u) for i, u in enumerate(urls[:n_src])]
    refs = [ImageInput(field=f"image_urls[{i}]", url=u) for i, u in enumerate(urls[n_src:])]
    aspect, quality, size = body.aspect_ratio or "auto", None, None
    if isinstance(body.image_size, dict):
        if set(body.image_size) != {"width", "height"}:
            raise ApiError(422, ErrorCode.INVALID_REQUEST, "image_size must be a name or {width, height}",
                           "image_size")
        size = (body.image_size["width"], body.image_size["height"])
    elif body.image_size is not None:
        if body.image_size not in IMAGE_SIZES:
            raise ApiError(422, ErrorCode.UNSUPPORTED_ASPECT_RATIO, f"image_size must be one of "
                           f"{', '.join(IMAGE_SIZES)} or {{width, height}}", "image_size")
        aspect, quality = IMAGE_SIZES[body.image_size]
    if body.resolution is not None:
        if body.resolution not in RESOLUTIONS:
            raise ApiError(422, ErrorCode.UNSUPPORTED_QUALITY, f"resolution must be one of "
                           f"{', '.join(RESOLUTIONS)}", "resolution")
        quality = RESOLUTIONS[body.resolution]
    if quality is not None and quality not in spec.quality:
        # The hosted defaults (e.g. Seedream's 2048 px) may exceed the stand-in's tiers: the nearest one serves.
        quality = min(spec.quality, key=lambda q: abs(_rank(q) - _rank(quality)))
        warnings.append(f"resolution: served at the nearest tier this model has ({quality})")
    return ImageAsk(model=model, prompt=body.prompt, sources=tuple(sources), references=tuple(refs),
                    aspect_ratio=aspect, quality=quality, num_images=body.max_images or body.num_images,
                    num_images_field="max_images" if body.max_images else "num_images",
                    seed=body.seed, output_format=body.output_format, num_inference_steps=body.num_inference_steps,
                    guidance_scale=body.guidance_scale, negative_prompt=body.negative_prompt,
                    warnings=tuple(warnings), size=size, size_field="image_size", loras=refs_from_paths(body.loras),
                    previews=body.previews)


def _rank(tier: str) -> int:
    return {"512": 0, "1K": 1, "2K": 2, "4K": 3}[tier]


def _video_ask(model: str, body: FalBody, warnings: list[str]) -> VideoAsk:
    if not body.image_url:
        raise ApiError(422, ErrorCode.MISSING_FIELD, "image_url is required (image-to-video)", "image_url")
    duration = body.duration
    if isinstance(duration, str):
        duration = int(duration.rstrip("s")) if duration.rstrip("s").isdigit() else -1
    if body.num_frames is not None:
        duration = max(1, round(body.num_frames / 16))
    return VideoAsk(model=model, prompt=body.prompt, frames=(ImageInput(field="image_url", url=body.image_url),),
                    duration=duration, resolution=body.resolution, aspect_ratio=body.aspect_ratio or "auto",
                    generate_audio=body.generate_audio, negative_prompt=body.negative_prompt, seed=body.seed,
                    num_inference_steps=body.num_inference_steps, guidance_scale=body.guidance_scale,
                    warnings=tuple(warnings), loras=refs_from_paths(body.loras), previews=body.previews)


def app_path(model_path: str) -> str:
    """fal's status/result URLs use the owner/app part of the endpoint only."""
    return "/".join(model_path.split("/")[:2])


def result_payload(ctx: Any, record: JobRecord, base: str, sync_mode: bool = False) -> dict[str, Any]:
    """The model's output JSON, as fal returns it from the result URL."""
    files = outputs(record, ctx.links(base))

    def file_obj(f: dict[str, Any]) -> dict[str, Any]:
        url = f"data:{f['content_type']};base64,{file_b64(ctx, f['file'])}" if sync_mode else f["url"]
        return {"url": url, "content_type": f["content_type"], "file_name": f["file"],
                "file_size": file_size(ctx, f["file"]), "width": f["width"], "height": f["height"]}

    job = JobView.of(record)
    seeds = job.params.seeds
    if record.result and record.result.get("videos"):
        return {"video": file_obj(files[0]), "seed": seeds[0]}
    return {"images": [file_obj(f) for f in files], "seed": seeds[0], "has_nsfw_concepts": [False] * len(files),
            "prompt": job.params.prompt, "description": "",
            "darkroom": {"task_id": record.id, "warnings": job.warnings}}


def _urls(base: str, model_path: str, job_id: str) -> dict[str, str]:
    root = f"{base}/{app_path(model_path)}/requests/{job_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


async def _submit(request: Request, model_path: str) -> tuple[str, FalBody]:
    ctx = ctx_of(request)
    if "/requests/" in model_path:  # a queue request's own URL (status, result, cancel): not a model to run
        raise ApiError(405, ErrorCode.METHOD_NOT_ALLOWED, "this route does not accept that method", None,
                       headers={"Allow": "PUT" if model_path.endswith("/cancel") else "GET"})
    model = ctx.names.resolve("fal", model_path)
    body = validated(FalBody, await json_object(request))
    warnings = _warnings_and_refusals(body)
    hook_url = request.query_params.get("fal_webhook")
    hook = await ctx.webhooks.prepare(hook_url, "fal", base_url(request), "fal_webhook",
                                      caller(request.scope)) if hook_url else None
    required = REQUIRED_IMAGES.get(model_path)
    if required and not getattr(body, required):
        raise ApiError(422, ErrorCode.MISSING_FIELD, f"{model_path} edits images: {required} is required (fal's "
                       "text-to-image endpoints have their own paths)", required)
    platform = _platform_headers(request)
    warnings += platform.pop("warnings")
    if model in ctx.catalog.video_ids():
        job_id, _ = await ctx.service.submit_video(replace(_video_ask(model, body, warnings), webhook=hook,
                                                           **platform), caller=caller(request.scope))
    else:
        job_id, _ = await ctx.service.submit_image(replace(_image_ask(model, body, ctx, warnings), webhook=hook,
                                                           **platform), caller=caller(request.scope))
    return job_id, body


def _platform_headers(request: Request) -> dict[str, Any]:
    """fal's start deadline and no-retry headers as the ask's fields, and warnings for the ones ignored
    (HEADER_POLICY)."""
    warnings = [message for name, message in _HEADER_WARNINGS.items() if name in request.headers]
    if request.headers.get("x-fal-queue-priority", "normal").strip().lower() != "normal":
        warnings.append("x-fal-queue-priority: served at normal priority (darkroom's `priority` field orders the "
                        "queue)")
    out: dict[str, Any] = {"no_retry": request.headers.get("x-fal-no-retry", "").strip().lower() in _TRUE,
                           "warnings": warnings}
    timeout = request.headers.get("x-fal-request-timeout")
    if timeout is not None:
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = -1.0
        if not 0.1 < seconds < 10 ** 7:
            raise ApiError(422, ErrorCode.INVALID_REQUEST, "X-Fal-Request-Timeout must be a number of seconds "
                           "above 0.1", "X-Fal-Request-Timeout")
        out["start_by"] = time.time() + seconds
    return out


async def _status_body(request: Request, app: str, record: JobRecord, logs: bool) -> dict[str, Any]:
    ctx = ctx_of(request)
    body: dict[str, Any] = {"status": _status(record), "request_id": record.id,
                            **_urls(base_url(request), f"fal-ai/{app}", record.id), "logs": []}
    if logs and record.progress_total and record.status is not JobStatus.PENDING:
        body["logs"] = [{"message": f"step {record.progress_step}/{record.progress_total}", "level": "INFO",
                         "source": "stdout", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())}]
    if record.status is JobStatus.PENDING:
        body["queue_position"] = await ctx.service.queue_position(record.id) or 0
    return body


@router.get("/fal-ai/{app:path}/requests/{request_id}/status/stream")
async def queue_status_stream(app: str, request_id: str, request: Request) -> StreamingResponse:
    """fal's streaming status: one `data:` event per change (queue position, step, preview) until COMPLETED. A
    request submitted with `previews: true` carries its latest preview as `darkroom.preview` (a JPEG data URL)."""
    ctx = ctx_of(request)
    await record_or_404(request, request_id, "request_id")
    logs = request.query_params.get("logs", "0") in _TRUE

    async def stream() -> AsyncIterator[str]:
        last: tuple[Any, ...] | None = None
        async for record in watch(request, request_id):
            if record is not None:
                body = await _status_body(request, app, record, logs)
                state = (body["status"], body.get("queue_position"), record.progress_step, record.preview_step)
                if state != last:
                    if last is None or state[3] != last[3]:
                        preview = await asyncio.to_thread(preview_data_url, ctx, record)
                        if preview:
                            body["darkroom"] = {"preview": {"step": record.preview_step, "image": preview}}
                    yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
                    last = state
                if record.status in FINAL_STATES:
                    return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **_request_id(request_id)})


@router.get("/fal-ai/{app:path}/requests/{request_id}/status")
async def queue_status(app: str, request_id: str, request: Request) -> JSONResponse:
    """IN_QUEUE (with queue_position), IN_PROGRESS or COMPLETED; `?logs=1` adds the denoising step as a log line."""
    record = await record_or_404(request, request_id, "request_id")
    body = await _status_body(request, app, record, request.query_params.get("logs", "0") in _TRUE)
    return JSONResponse(body, status_code=202 if record.status not in FINAL_STATES else 200,
                        headers=_request_id(record.id))


@router.get("/fal-ai/{app:path}/requests/{request_id}")
async def queue_result(app: str, request_id: str, request: Request) -> JSONResponse:
    """The output; a failed request's error with its status code; 400 while it still runs."""
    ctx = ctx_of(request)
    record = await record_or_404(request, request_id, "request_id")
    if record.status is JobStatus.COMPLETED:
        return JSONResponse(result_payload(ctx, record, base_url(request)), headers=_request_id(record.id))
    if record.status in FINAL_STATES:
        err = failure(record)
        headers = {"X-Fal-Error-Type": str(err.code), **_request_id(record.id)}
        if err.code is ErrorCode.START_TIMEOUT:
            headers |= {"X-Fal-Error-Type": "request_timeout", "X-Fal-Request-Timeout-Type": "user"}
        return JSONResponse(error_shape(err), status_code=err.status, headers=headers)
    raise ApiError(400, ErrorCode.NOT_READY, "the request is still in progress; poll its status_url")


@router.put("/fal-ai/{app:path}/requests/{request_id}/cancel")
async def queue_cancel(app: str, request_id: str, request: Request) -> JSONResponse:
    """CANCELLATION_REQUESTED, or ALREADY_COMPLETED (400)."""
    ctx = ctx_of(request)
    record = await ctx.service.get(request_id, caller(request.scope)) if len(request_id) <= 100 else None
    if record is None:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    if record.status in FINAL_STATES or not await ctx.service.cancel(request_id):
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)


def error_shape(err: ApiError) -> dict[str, Any]:
    """darkroom's error plus fal's FastAPI-style `detail` list."""
    return {**err.body(), "detail": [{"loc": ["body", err.field] if err.field else ["body"], "msg": err.message,
                                      "type": str(err.code)}]}


def webhook_payload(record: JobRecord, base: str, _event: str, ctx: Any) -> dict[str, Any]:
    """fal's callback envelope."""
    ok = record.status is JobStatus.COMPLETED
    return {"request_id": record.id, "gateway_request_id": record.id, "status": "OK" if ok else "ERROR",
            "payload": result_payload(ctx, record, base) if ok else None,
            "error": None if ok else (record.error or {}).get("message", "the request failed")}


# After the request routes: the catch-all model path would otherwise shadow them (and their Allow header).
@router.post("/fal-ai/{model_path:path}", openapi_extra=json_body(FalBody, creates_task=True))
async def queue_submit(model_path: str, request: Request) -> JSONResponse:
    """Queue a request: request_id, status/response/cancel URLs and the queue position."""
    path = f"fal-ai/{model_path}"
    job_id, _ = await _submit(request, path)
    ctx = ctx_of(request)
    return JSONResponse({"request_id": job_id, "gateway_request_id": job_id, "status": "IN_QUEUE",
                         "queue_position": await ctx.service.queue_position(job_id) or 0,
                         **_urls(base_url(request), path, job_id)}, headers=_request_id(job_id))


@router.post("/sync/fal-ai/{model_path:path}", openapi_extra=json_body(FalBody, creates_task=True, waits=True))
async def sync_run(model_path: str, request: Request) -> JSONResponse:
    """fal.run: hold the connection and answer with the output."""
    job_id, body = await _submit(request, f"fal-ai/{model_path}")
    record = await wait_done(request, job_id)
    return JSONResponse(result_payload(ctx_of(request), record, base_url(request), body.sync_mode),
                        headers=_request_id(job_id))


def _request_id(job_id: str) -> dict[str, str]:
    """The header fal's clients read the request id from (`result.requestId`)."""
    return {"x-fal-request-id": job_id}


def _status(record: JobRecord) -> str:
    return {JobStatus.PENDING: "IN_QUEUE", JobStatus.PROCESSING: "IN_PROGRESS"}.get(record.status, "COMPLETED")


DIALECT = Dialect(
    "fal", (router,), prefixes=("/fal-ai/", "/sync/fal-ai/"), error_shape=error_shape, webhook=webhook_payload,
    tag="fal", doc_order=20, claim_order=1,
    tag_description="fal's queue (queue.fal.run: submit, status, result, cancel) and synchronous runs (fal.run).",
    auth_schemes=("Key",), response_headers=("x-fal-request-id", "X-Fal-Error-Type", "X-Fal-Request-Timeout-Type"),
    request_headers=tuple(HEADER_POLICY),
    field_policies=(FieldPolicy("fal", "POST /fal-ai/<model> (queue), /sync/fal-ai/<model>", FIELD_POLICY,
                                FalBody, source="https://docs.fal.ai/model-apis/model-endpoints/queue"),
                    FieldPolicy("fal platform headers", "request headers of POST /fal-ai/<model>", HEADER_POLICY,
                                source="https://docs.fal.ai/documentation/model-apis/common-parameters")),
    compare_client=FalClient)
