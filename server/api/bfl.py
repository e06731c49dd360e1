"""Black Forest Labs: POST /v1/flux-kontext-pro (-max, flux-2-*) -> {id, polling_url};
GET /v1/get_result?id= with BFL's status words and result.sample. Endpoints map through
configs/dialects.toml [bfl].
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from compare.clients import BflClient
from server.api.auth import caller
from server.api.dialect import Dialect, FieldPolicy
from server.api.dialect_io import base_url, ctx_of, json_object, outputs, validated
from server.api.links import Links
from server.api.lora_fields import ref_from_weights
from server.api.openapi_doc import json_body
from server.asks import ImageAsk, ImageInput
from server.errors import ApiError, ErrorCode
from server.jobs.store import JobRecord, JobStatus
from server.jobs.view import JobView
from server.resolve import SEED_MAX

router = APIRouter()

RESULT_URL_S = 600.0
"""BFL's result URLs expire 10 minutes after the result is ready (their integration guide); darkroom's do too."""

FIELD_POLICY = {
    "prompt": "mapped: prompt",
    "input_image": "mapped: the source image (base64, data URI or http(s) URL)",
    "input_image_2": "mapped: reference image",
    "input_image_3": "mapped: reference image",
    "input_image_4": "mapped: reference image",
    "input_image_5": "mapped: reference image (FLUX.2)",
    "input_image_6": "mapped: reference image (FLUX.2)",
    "input_image_7": "mapped: reference image (FLUX.2)",
    "input_image_8": "mapped: reference image (FLUX.2)",
    "aspect_ratio": "mapped: aspect_ratio",
    "width": "mapped: exact size with height (FLUX.2)",
    "height": "mapped: exact size with width (FLUX.2)",
    "seed": "mapped: seed",
    "steps": "mapped: num_inference_steps (flux-2-flex)",
    "guidance": "mapped: guidance_scale (flux-2-flex)",
    "output_format": "mapped: output_format",
    "webhook_url": "mapped: signed completion webhook",
    "webhook_secret": "mapped: the webhook's signing secret",
    "prompt_upsampling": "refused when true (unsupported_feature): no prompt rewriting offline",
    "safety_tolerance": "warned: no safety filter runs locally",
    "finetune_id": "mapped: a LoRA (library id or URL) stands in for a BFL fine-tune",
    "finetune_strength": "mapped: that LoRA's scale (BFL's default 1.1)",
}


class BflBody(BaseModel):
    """Kontext and FLUX.2 request fields."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    input_image: str | None = Field(None, max_length=20_000_000)
    input_image_2: str | None = Field(None, max_length=20_000_000)
    input_image_3: str | None = Field(None, max_length=20_000_000)
    input_image_4: str | None = Field(None, max_length=20_000_000)
    input_image_5: str | None = Field(None, max_length=20_000_000)
    input_image_6: str | None = Field(None, max_length=20_000_000)
    input_image_7: str | None = Field(None, max_length=20_000_000)
    input_image_8: str | None = Field(None, max_length=20_000_000)
    aspect_ratio: str | None = Field(None, max_length=20)
    width: int | None = Field(None, ge=64, le=4096)
    height: int | None = Field(None, ge=64, le=4096)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    steps: int | None = Field(None, ge=1, le=200)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    output_format: str = "png"
    webhook_url: str | None = Field(None, max_length=2000)
    webhook_secret: str | None = Field(None, min_length=8, max_length=256)
    prompt_upsampling: bool | None = None
    safety_tolerance: int | None = Field(None, ge=0, le=6)
    finetune_id: str | None = Field(None, max_length=4000)
    finetune_strength: float = Field(1.1, ge=0.0, le=2.0)


def image_input(value: str, field: str) -> ImageInput:
    """BFL images are http(s) URLs, data URIs or bare base64."""
    if value[:5].lower() == "data:" or value.lower().startswith(("http://", "https://")):
        return ImageInput(field=field, url=value)
    try:
        return ImageInput(field=field, data=base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        raise ApiError(400, ErrorCode.INVALID_IMAGE, f"{field} is neither a URL nor valid base64", field) from None


@router.post("/v1/flux-{variant}", openapi_extra=json_body(BflBody, creates_task=True))
async def submit(variant: str, request: Request) -> JSONResponse:
    """Queue a generation; poll the returned polling_url (or /v1/get_result?id=)."""
    ctx = ctx_of(request)
    model = ctx.names.resolve("bfl", f"flux-{variant}")
    body = validated(BflBody, await json_object(request))
    if body.prompt_upsampling:
        raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "prompt upsampling needs a hosted language model; send "
                       "prompt_upsampling=false", "prompt_upsampling")
    if (body.width is None) != (body.height is None):
        raise ApiError(422, ErrorCode.MISSING_FIELD, "width and height go together", "width")
    if body.output_format not in ("png", "jpeg", "webp"):
        raise ApiError(422, ErrorCode.INVALID_REQUEST, "output_format must be png, jpeg or webp", "output_format")
    warnings = ("safety_tolerance: no safety filter runs on this local server",) \
        if body.safety_tolerance is not None else ()
    refs = [image_input(v, f"input_image_{i}") for i in range(2, 9)
            if (v := getattr(body, f"input_image_{i}")) is not None]
    sources = [image_input(body.input_image, "input_image")] if body.input_image else []
    if not sources and refs:
        sources, refs = refs[:1], refs[1:]
    base = base_url(request)
    hook = await ctx.webhooks.prepare(body.webhook_url, "bfl", base, "webhook_url", caller(request.scope),
                                      secret=body.webhook_secret) \
        if body.webhook_url else None
    ask = ImageAsk(model=model, prompt=body.prompt, sources=tuple(sources), references=tuple(refs),
                   aspect_ratio=body.aspect_ratio or "auto", seed=body.seed, output_format=body.output_format,
                   num_inference_steps=body.steps, guidance_scale=body.guidance, warnings=warnings,
                   size=(body.width, body.height) if body.width and body.height else None, size_field="width",
                   webhook=hook, loras=ref_from_weights(body.finetune_id, body.finetune_strength, "finetune_id"))
    job_id, _ = await ctx.service.submit_image(ask, caller=caller(request.scope))
    return JSONResponse({"id": job_id, "polling_url": f"{base}/v1/get_result?id={job_id}", "cost": 0.0,
                         "input_mp": None, "output_mp": None})


_STATUS = {JobStatus.PENDING: "Pending", JobStatus.PROCESSING: "Pending", JobStatus.COMPLETED: "Ready",
           JobStatus.FAILED: "Error", JobStatus.CANCELLED: "Error"}


def result_view(record: JobRecord, links: Links) -> dict[str, Any]:
    """BFL's get_result object."""
    body: dict[str, Any] = {"id": record.id, "status": _STATUS[record.status], "result": None,
                            "progress": None, "details": None, "preview": None}
    if record.status is JobStatus.PROCESSING and record.progress_total:
        body["progress"] = round(record.progress_step / record.progress_total, 3)
    if record.status is JobStatus.COMPLETED:
        files = outputs(record, replace(links, valid_s=RESULT_URL_S))
        end = record.finished_at or time.time()
        params = JobView.of(record).params
        body["result"] = {"sample": files[0]["url"], "prompt": params.prompt, "seed": params.seeds[0], "start_time": record.started_at, "end_time": end,
                          "duration": round(end - (record.started_at or end), 3)}
        body["progress"] = 1.0
    elif record.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        body["details"] = record.error
    return body


@router.get("/v1/get_result")
async def get_result(request: Request, id: str = "") -> JSONResponse:  # `id`: BFL's parameter name
    """Pending / Ready (result.sample) / Error; 'Task not found' (404) for an unknown id."""
    ctx = ctx_of(request)
    record = await ctx.service.get(id, caller(request.scope)) if 0 < len(id) <= 100 else None
    if record is None:
        return JSONResponse({"id": id[:100], "status": "Task not found", "result": None}, status_code=404)
    return JSONResponse(result_view(record, ctx.links(base_url(request))))


def webhook_payload(record: JobRecord, base: str, _event: str, ctx: Any) -> dict[str, Any]:
    """BFL's webhook body is the result object."""
    return result_view(record, ctx.links(base))


def error_shape(err: ApiError) -> dict[str, Any]:
    """darkroom's error plus BFL's `detail`."""
    return {**err.body(), "detail": err.message}


DIALECT = Dialect(
    "bfl", (router,), prefixes=("/v1/flux-", "/v1/get_result"), error_shape=error_shape, webhook=webhook_payload,
    tag="Black Forest Labs", doc_order=40, claim_order=3,
    tag_description="Black Forest Labs' FLUX API: submit to /v1/<endpoint>, poll /v1/get_result (result.sample is "
                    "a URL valid for 10 minutes after the result is ready, as BFL's are).",
    key_headers=("x-key",),
    field_policies=(FieldPolicy("Black Forest Labs", "POST /v1/flux-kontext-pro, -max, /v1/flux-2-*",
                                FIELD_POLICY, BflBody, source="https://docs.bfl.ai/api-reference"),),
    compare_client=BflClient)
