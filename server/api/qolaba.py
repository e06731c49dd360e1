"""The hosted platform's own image API (Qolaba-compatible): /api/v1/images/generate and the model list.

The only place its field names are known. JSON bodies and multipart uploads
both land in `GenerateBody`, then in a dialect-neutral `ImageAsk`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

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
from server.api.request_body import read_json_or_multipart
from server.api.tasks import task_view
from server.asks import ImageAsk, ImageInput
from server.context import AppContext
from server.errors import ApiError, ErrorCode
from server.jobs.store import JobStatus
from server.jobs.view import JobView
from server.resolve import SEED_MAX

router = APIRouter()

# Fields the hosted API takes that mean nothing for a local diffusion model: accepted, named in `warnings`.
HOSTED_ONLY: dict[str, str] = {
    "temperature": "temperature is a Gemini sampling setting with no meaning for the local model; ignored",
}
_MAX_LIST = 64


class GenerateBody(LoraListField):
    """Request body of POST /api/v1/images/generate."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="Exact model id, see /api/v1/images/models.")
    prompt: str = Field(min_length=1, max_length=4000, description="Editing instruction or description.")
    image_urls: list[str] = Field(default_factory=list, max_length=_MAX_LIST,
                                  description="Source images: http(s) URLs or data: URLs.")
    reference_images: list[str] = Field(default_factory=list, max_length=_MAX_LIST,
                                        description="Reference images for subject/style consistency.")
    aspect_ratio: str = Field("auto", max_length=20, description="'auto' (match the first source) or W:H.")
    quality: str | None = Field(None, max_length=10, description="'512', '1K', '2K' or '4K' as the model lists.")
    num_images: int | None = Field(None, ge=1, description="How many images (1 to the model's maxNumImages).")
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    output_format: Literal["png", "jpeg", "webp"] = "png"
    celery: bool = Field(False, description="true: answer 202 with a task id at once; false: wait for the images.")
    # darkroom extensions
    mask_url: str | None = Field(None, description="Mask (white = repaint) as an http(s) or data: URL.")
    num_inference_steps: int | None = Field(None, ge=1, le=200)
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)
    strength: float | None = Field(None, gt=0.0, le=1.0)
    negative_prompt: str | None = Field(None, max_length=4000, description="What to avoid (where the model has it).")
    priority: int = Field(0, ge=0, le=9, description="darkroom extension: 0-9; each point is worth "
                          "DARKROOM_PRIORITY_S seconds of queue waiting.")
    webhook_url: str | None = Field(None, max_length=2000, description="darkroom extension: POSTed the task "
                                    "object when it finishes (signed; see README).")
    previews: bool = Field(False, description="darkroom extension: live previews of the forming image, in the "
                           "task's event stream and at /api/v1/tasks/{id}/preview.")
    # hosted fields with no local meaning
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    # hosted features that cannot exist offline: refused when asked for
    search_grounding: bool | None = Field(None, description="Hosted web-search grounding; not available offline.")
    enable_web_search: bool | None = Field(None, description="fal's name for search grounding; not available.")

    @field_validator("output_format", mode="before")
    @classmethod
    def _jpg(cls, v: object) -> object:
        return "jpeg" if isinstance(v, str) and v.lower() in ("jpg", "jpeg") else v.lower() if isinstance(v, str) else v


_LIST_FIELDS = frozenset({"image_urls", "reference_images"})
_FILE_ROLES = {"image": "image_urls", "images": "image_urls", "image_urls": "image_urls",
               "reference_images": "reference_images", "reference_image": "reference_images",
               "mask": "mask_url", "mask_url": "mask_url"}
VALID_FIELDS = tuple(GenerateBody.model_fields)


def _ctx(request: Request) -> AppContext:
    return request.app.state.ctx


async def read_body(request: Request) -> tuple[dict[str, Any], dict[str, list[bytes]]]:
    """JSON or multipart into (fields, uploaded files by role); shared by the platform's image and video routes."""
    fields, files = await read_json_or_multipart(request, _FILE_ROLES, 2 * _MAX_LIST + 1,
                                                 "files in image, reference_images, mask", _LIST_FIELDS)
    return fields, {role: [u.data for u in uploads] for role, uploads in files.items()}


def _refuse_offline_features(body: GenerateBody) -> None:
    for name in ("search_grounding", "enable_web_search"):
        if getattr(body, name):
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE,
                           "search-grounded editing needs the hosted service's live web search; darkroom runs "
                           f"offline on local models, so send {name}=false or leave it out", name)


def _to_ask(body: GenerateBody, files: dict[str, list[bytes]]) -> ImageAsk:
    sources = [ImageInput(field=f"image_urls[{i}]", url=u) for i, u in enumerate(body.image_urls)]
    sources += [ImageInput(field="image", data=d) for d in files.get("image_urls", [])]
    refs = [ImageInput(field=f"reference_images[{i}]", url=u) for i, u in enumerate(body.reference_images)]
    refs += [ImageInput(field="reference_images", data=d) for d in files.get("reference_images", [])]
    masks = files.get("mask_url", [])
    if len(masks) > 1 or (masks and body.mask_url):
        raise ApiError(422, ErrorCode.TOO_MANY_IMAGES, "send at most one mask", "mask_url")
    mask = (ImageInput(field="mask", data=masks[0]) if masks
            else ImageInput(field="mask_url", url=body.mask_url) if body.mask_url else None)
    warnings = [msg for name, msg in HOSTED_ONLY.items() if getattr(body, name) is not None]
    return ImageAsk(
        model=body.model, prompt=body.prompt, sources=tuple(sources), references=tuple(refs), mask=mask,
        aspect_ratio=body.aspect_ratio, quality=body.quality, num_images=body.num_images, seed=body.seed,
        output_format=body.output_format, num_inference_steps=body.num_inference_steps,
        guidance_scale=body.guidance_scale, strength=body.strength, negative_prompt=body.negative_prompt,
        warnings=tuple(warnings), priority=body.priority, loras=refs_from_items(body.loras), previews=body.previews,
    )


@router.post(
    "/api/v1/images/generate",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": body_schema(GenerateBody)},
        "multipart/form-data": {"schema": {"type": "object"}},
    }}, **route_facts(creates_task=True, waits=True)},
)
async def generate(request: Request) -> JSONResponse:
    """Text-to-image and image-to-image. celery=false waits and returns images; true returns 202 + task_id."""
    ctx = _ctx(request)
    fields, files = await read_body(request)
    try:
        body = GenerateBody.model_validate(fields)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(), VALID_FIELDS) from None
    _refuse_offline_features(body)
    base = ctx.public_base(str(request.base_url))
    hook = await ctx.webhooks.prepare(body.webhook_url, "darkroom", base, "webhook_url", caller(request.scope)) if body.webhook_url else None
    ask = replace(_to_ask(body, files), webhook=hook)

    async def submit(idempotency_key: str | None) -> str:
        job_id, _ = await ctx.service.submit_image(ask, idempotency_key, caller=caller(request.scope))
        return job_id

    job_id, _new = await submit_once(request, ctx, body_digest(fields, files), submit)
    if body.celery:
        record = await ctx.service.get(job_id, caller(request.scope))
        assert record is not None
        return JSONResponse({"task_id": job_id, "status": str(record.status), "warnings": JobView.of(record).warnings},
                            status_code=202)
    record = await ctx.service.wait(job_id, ctx.settings.server.sync_timeout_s)
    if record.status is JobStatus.COMPLETED:
        return JSONResponse(task_view(record, ctx.links(base)))
    if record.status is JobStatus.FAILED:
        assert record.error is not None
        err = record.error
        status = 422 if err.get("code") == "invalid_request" else 500
        return JSONResponse({"task_id": job_id, "status": "failed", "error": err}, status_code=status)
    if record.status is JobStatus.CANCELLED:
        # Another client cancelled the task while this one waited for it.
        return JSONResponse({"task_id": job_id, "status": "cancelled", "error": record.error}, status_code=409)
    # Still running after sync_timeout_s: hand back the task id instead of holding the connection.
    return JSONResponse({"task_id": job_id, "status": str(record.status), "warnings": JobView.of(record).warnings},
                        status_code=202)


@router.get("/api/v1/images/models")
async def list_models(request: Request) -> JSONResponse:
    """Every model id with its limits, and what runs it locally."""
    ctx = _ctx(request)
    snap = await engine_snapshot(ctx)
    models = []
    for spec in ctx.catalog.specs():
        entry = ctx.catalog.weights_for(spec)
        where = ctx.located[spec.weights]
        models.append({
            "id": spec.id,
            "name": spec.name,
            "type": "image",
            "provider": "darkroom",
            "providerName": "darkroom (local)",
            "description": spec.description,
            "capabilities": spec.capabilities,
            "imageSize": spec.aspect_ratios,
            "quality": spec.quality,
            "defaultQuality": spec.default_quality,
            "outputFormat": [f"image/{f}" for f in spec.output_formats],
            "maxNumImages": spec.max_num_images,
            "defaultNumImages": spec.default_num_images,
            "maxSourceImages": spec.max_source_images,
            "maxReferenceImages": spec.max_reference_images,
            "supportsSeed": spec.supports_seed,
            "editControls": family_class(spec.family).edit_controls(),
            "takesLoras": family_class(spec.family).takes_loras,
            "defaults": spec.defaults.model_dump(),
            "acceleration": acceleration_view(ctx, snap, spec.id, spec.weights),
            "local": {
                "family": spec.family,
                "weights": entry.name,
                "repo": entry.repo,
                "revision": entry.revision,
                "license": entry.license,
                "license_url": entry.license_url,
                "commercial_use": entry.all_commercial,
                "addons": [{"folder": a.folder, "repo": a.repo, "license": a.license,
                            "commercial_use": a.commercial_use} for a in entry.addons],
                "weights_kind": "demo" if where.demo else "real",
                "demo_notice": ("random demo weights: outputs are noise; run `darkroom weights pull "
                                f"{entry.name}` for the real model") if where.demo else None,
            },
        })
    return JSONResponse({"models": models})
