"""Image-to-video in the platform's style: POST /api/v1/videos/generate (always async) and the model list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, ValidationError, field_validator

from pipelines.registry import family_class
from server.api.auth import caller
from server.api.dialect_io import acceleration_view, engine_snapshot
from server.api.errors import from_validation_errors
from server.api.idempotency import body_digest, submit_once
from server.api.lora_fields import LoraListField, refs_from_items
from server.api.openapi_doc import body_schema, route_facts
from server.api.qolaba import read_body
from server.asks import ImageInput, VideoAsk
from server.context import AppContext
from server.jobs.view import JobView
from server.resolve import SEED_MAX, device_resolution

router = APIRouter()


class VideoBody(LoraListField):
    """Request body of POST /api/v1/videos/generate."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="Exact model id, see /api/v1/videos/models.")
    prompt: str = Field(min_length=1, max_length=4000, description="What should happen in the clip.")
    image_urls: list[str] = Field(default_factory=list, max_length=2,
                                  description="First frame, and a last frame where the model supports it.")
    duration: int | None = Field(None, description="Seconds: 4, 6 or 8 as the model lists ('8s' accepted).")
    resolution: str | None = Field(None, max_length=10, description="'240p', '480p', '720p' or '1080p'.")
    aspect_ratio: str = Field("auto", max_length=20, description="'auto' (match the first frame) or W:H.")
    fps: int | None = Field(None, ge=1, le=60)
    generate_audio: bool | None = None
    negative_prompt: str | None = Field(None, max_length=4000)
    priority: int = Field(0, ge=0, le=9, description="darkroom extension: 0-9, worth DARKROOM_PRIORITY_S s each.")
    webhook_url: str | None = Field(None, max_length=2000, description="darkroom extension: POSTed the task "
                                    "object when it finishes (signed; see README).")
    previews: bool = Field(False, description="darkroom extension: live previews of the forming clip (its middle "
                           "frame), in the task's event stream and at /api/v1/tasks/{id}/preview.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    num_inference_steps: int | None = Field(None, ge=1, le=200)
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)
    celery: bool | None = Field(None, description="Accepted for symmetry with images; video is always async.")

    @field_validator("duration", mode="before")
    @classmethod
    def _seconds(cls, v: object) -> object:
        # fal and Vertex spell durations "8s".
        if isinstance(v, str) and v.lower().endswith("s") and v[:-1].isdigit():
            return int(v[:-1])
        return v


def _ctx(request: Request) -> AppContext:
    return request.app.state.ctx


@router.post(
    "/api/v1/videos/generate",
    status_code=202,
    openapi_extra={**route_facts(creates_task=True), "requestBody": {"required": True, "content": {
        "application/json": {"schema": body_schema(VideoBody)},
        "multipart/form-data": {"schema": {"type": "object"}},
    }}},
)
async def generate_video(request: Request) -> JSONResponse:
    """Queue an image-to-video job: 202 with the task id; poll /api/v1/tasks/{id} or stream its events."""
    ctx = _ctx(request)
    fields, files = await read_body(request)
    try:
        body = VideoBody.model_validate(fields)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(), tuple(VideoBody.model_fields)) from None
    frames = [ImageInput(field=f"image_urls[{i}]", url=u) for i, u in enumerate(body.image_urls)]
    frames += [ImageInput(field="image", data=d) for d in files.get("image_urls", [])]
    warnings = ("video jobs are always asynchronous; celery=false was ignored",) if body.celery is False else ()
    ask = VideoAsk(
        model=body.model, prompt=body.prompt, frames=tuple(frames), duration=body.duration,
        resolution=body.resolution, aspect_ratio=body.aspect_ratio, fps=body.fps,
        generate_audio=body.generate_audio, negative_prompt=body.negative_prompt, seed=body.seed,
        num_inference_steps=body.num_inference_steps, guidance_scale=body.guidance_scale, warnings=warnings,
        priority=body.priority, loras=refs_from_items(body.loras), previews=body.previews,
        webhook=await ctx.webhooks.prepare(body.webhook_url, "darkroom", ctx.public_base(str(request.base_url)),
                                           "webhook_url", caller(request.scope)) if body.webhook_url else None,
    )

    async def submit(idempotency_key: str | None) -> str:
        job_id, _ = await ctx.service.submit_video(ask, idempotency_key, caller=caller(request.scope))
        return job_id

    job_id, _new = await submit_once(request, ctx, body_digest(fields, files), submit)
    record = await ctx.service.get(job_id, caller(request.scope))
    assert record is not None
    job = JobView.of(record)
    width, height = job.output_size
    return JSONResponse({"task_id": job_id, "status": str(record.status), "warnings": job.warnings,
                         "width": width, "height": height, "num_frames": job.params.num_frames,
                         "fps": job.params.fps, "generate_audio": job.params.generate_audio}, status_code=202)


@router.get("/api/v1/videos/models")
async def list_video_models(request: Request) -> JSONResponse:
    """Every video model id: durations, resolutions, fps, audio, and what runs it locally."""
    ctx = _ctx(request)
    snap = await engine_snapshot(ctx)
    models: list[dict[str, Any]] = []
    cpu_only = ctx.engine.cpu_only()
    for spec in ctx.catalog.video_specs():
        fam = family_class(spec.family)
        entry = ctx.catalog.weights_for(spec)
        demo = ctx.located[spec.weights].demo
        models.append({
            "id": spec.id, "name": spec.name, "type": "video", "provider": "darkroom", "description": spec.description,
            "capabilities": ["image-to-video"] + (["audio"] if getattr(fam, "supports_audio", False) else []),
            "durations": spec.durations, "resolutions": spec.resolutions, "aspectRatios": spec.aspect_ratios,
            "fps": spec.fps, "supportsAudio": getattr(fam, "supports_audio", False),
            "takesLoras": fam.takes_loras,
            "supportsLastFrame": getattr(fam, "supports_last_frame", False), "supportsSeed": True,
            "defaults": spec.defaults.model_dump(),
            # What a request without a resolution gets on this server's devices (the draft tier on a CPU).
            "deviceDefaults": {"resolution": device_resolution(spec, cpu_only)},
            "acceleration": acceleration_view(ctx, snap, spec.id, spec.weights),
            "local": {"family": spec.family, "weights": entry.name, "repo": entry.repo, "revision": entry.revision,
                      "license": entry.license, "license_url": entry.license_url,
                      "commercial_use": entry.all_commercial, "weights_kind": "demo" if demo else "real"},
        })
    return JSONResponse({"models": models})
