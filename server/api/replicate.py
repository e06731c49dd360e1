"""Replicate's predictions API: POST /v1/models/{owner}/{name}/predictions, POST /v1/predictions,
`Prefer: wait`, GET /v1/predictions/{id}, POST /v1/predictions/{id}/cancel, webhooks with
webhook_events_filter. Model names map through configs/dialects.toml [replicate].
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from compare.clients import ReplicateClient
from server.api import replicate_files
from server.api.auth import caller
from server.api.dialect import Dialect, FieldPolicy
from server.api.dialect_io import base_url, ctx_of, json_object, outputs, record_or_404, validated, watch
from server.api.links import Links
from server.api.lora_fields import ref_from_weights
from server.api.openapi_doc import body_schema, json_body
from server.api.replicate_files import own_file_bytes
from server.asks import ImageAsk, ImageInput, LoraRef
from server.errors import ApiError, ErrorCode
from server.jobs.store import FINAL_STATES, JobRecord, JobStatus
from server.jobs.view import JobView
from server.resolve import SEED_MAX

router = APIRouter()

# Models whose output is a list of files on Replicate (the others return one URI).
LIST_OUTPUT = frozenset({"bytedance/seedream-4"})
EVENTS = ("start", "output", "logs", "completed")

FIELD_POLICY = {
    "prompt": "mapped: prompt",
    "input_image": "mapped: the source image (URI or data URI)",
    "image_input": "mapped: source images, then references beyond the model's source limit",
    "aspect_ratio": "mapped: aspect_ratio (match_input_image = auto)",
    "output_format": "mapped: output_format (jpg = jpeg)",
    "seed": "mapped: seed",
    "resolution": "mapped: quality tier (1K/2K/4K)",
    "size": "mapped: quality tier (1K/2K/4K); custom uses width/height",
    "width": "mapped: exact width with size=custom",
    "height": "mapped: exact height with size=custom",
    "max_images": "mapped: num_images",
    "num_outputs": "mapped: num_images",
    "sequential_image_generation": "warned: images are independent samples",
    "prompt_upsampling": "refused when true (unsupported_feature): no prompt rewriting offline",
    "enhance_prompt": "refused when true (unsupported_feature): no prompt rewriting offline",
    "safety_tolerance": "warned: no safety filter runs locally",
    "safety_filter_level": "warned: no safety filter runs locally",
    "output_quality": "refused unless 100 (unsupported_feature): fixed encoder settings",
    "lora_weights": "mapped: a LoRA by URL (this server's files API too) or library id",
    "lora_scale": "mapped: that LoRA's scale",
    "extra_lora": "mapped: a second LoRA",
    "extra_lora_scale": "mapped: the second LoRA's scale",
}


class ReplicateInput(BaseModel):
    """The union of the inputs of the Replicate models darkroom answers."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    input_image: str | None = Field(None, max_length=20_000_000)
    image_input: list[str] = Field(default_factory=list, max_length=32)
    aspect_ratio: str = Field("match_input_image", max_length=20)
    output_format: str = "png"
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    resolution: str | None = Field(None, max_length=8)
    size: str | None = Field(None, max_length=8)
    width: int | None = Field(None, ge=64, le=4096)
    height: int | None = Field(None, ge=64, le=4096)
    # The upper bound is the id's own, checked by the service (which names it; a schema bound here would not).
    max_images: int | None = Field(None, ge=1)
    num_outputs: int | None = Field(None, ge=1)
    sequential_image_generation: str | None = None
    prompt_upsampling: bool | None = None
    enhance_prompt: bool | None = None
    safety_tolerance: int | None = None
    safety_filter_level: str | None = None
    output_quality: int | None = Field(None, ge=0, le=100)
    lora_weights: str | None = Field(None, max_length=4000)
    lora_scale: float = Field(1.0, ge=-4.0, le=4.0)
    extra_lora: str | None = Field(None, max_length=4000)
    extra_lora_scale: float = Field(1.0, ge=-4.0, le=4.0)


class PredictionBody(BaseModel):
    """POST body: input plus webhook settings (and `version` on /v1/predictions)."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any]
    version: str | None = None
    webhook: str | None = Field(None, max_length=2000)
    webhook_events_filter: list[str] = Field(default_factory=lambda: list(EVENTS))
    stream: bool | None = None


def _image_input(request: Request, field: str, url: str) -> ImageInput:
    """A file of this server's files API is read from the store; any other URL is fetched as usual."""
    data = own_file_bytes(request, url)
    return ImageInput(field=field, data=data) if data is not None else ImageInput(field=field, url=url)


def _to_ask(model: str, inp: ReplicateInput, ctx: Any, request: Request) -> ImageAsk:
    for name in ("prompt_upsampling", "enhance_prompt"):
        if getattr(inp, name):
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, f"{name} needs a hosted language model; send false",
                           f"input.{name}")
    if inp.output_quality is not None and inp.output_quality != 100:
        raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "outputs use fixed encoder settings; remove "
                       "output_quality", "input.output_quality")
    warnings = []
    if inp.safety_tolerance is not None or inp.safety_filter_level is not None:
        warnings.append("safety settings: no safety filter runs on this local server")
    if inp.sequential_image_generation not in (None, "disabled"):
        warnings.append("sequential_image_generation: images are independent samples")
    spec = ctx.catalog.get(model)
    urls = ([inp.input_image] if inp.input_image else []) + inp.image_input
    n_src = min(len(urls), spec.max_source_images)
    field = "input.input_image" if inp.input_image else "input.image_input"
    sources = [_image_input(request, field, u) for u in urls[:n_src]]
    refs = [_image_input(request, "input.image_input", u) for u in urls[n_src:]]
    tier = inp.resolution or (inp.size if inp.size != "custom" else None)
    size = None
    if inp.size == "custom":
        if inp.width is None or inp.height is None:
            raise ApiError(422, ErrorCode.MISSING_FIELD, "size=custom needs width and height", "input.width")
        size = (inp.width, inp.height)
    fmt = {"jpg": "jpeg"}.get(inp.output_format, inp.output_format)
    if fmt not in ("png", "jpeg", "webp"):
        raise ApiError(422, ErrorCode.INVALID_REQUEST, "output_format must be png, jpg or webp",
                       "input.output_format")
    aspect = "auto" if inp.aspect_ratio == "match_input_image" else inp.aspect_ratio
    loras = (_lora(request, inp.lora_weights, inp.lora_scale, "input.lora_weights")
             + _lora(request, inp.extra_lora, inp.extra_lora_scale, "input.extra_lora"))
    return ImageAsk(model=model, prompt=inp.prompt, sources=tuple(sources), references=tuple(refs),
                    aspect_ratio=aspect, quality=tier, num_images=inp.max_images or inp.num_outputs, seed=inp.seed,
                    num_images_field="input.max_images" if inp.max_images else "input.num_outputs",
                    output_format=fmt, warnings=tuple(warnings), size=size, size_field="input.width", loras=loras)


def _lora(request: Request, value: str | None, scale: float, field: str) -> tuple[LoraRef, ...]:
    """Replicate's LoRA field: a URL (a file of this server's files API is read from the store) or a library id."""
    if value and (data := own_file_bytes(request, value)) is not None:
        return (LoraRef(field, url=value, scale=scale, data=data),)
    return ref_from_weights(value, scale, field)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


_STATUS = {JobStatus.PENDING: "starting", JobStatus.PROCESSING: "processing", JobStatus.COMPLETED: "succeeded",
           JobStatus.FAILED: "failed", JobStatus.CANCELLED: "canceled"}


def prediction(record: JobRecord, links: Links, owner_name: str | None = None) -> dict[str, Any]:
    """The Replicate prediction object for a job."""
    base = links.base
    note = record.dialect or {}
    name = owner_name or note.get("replicate_model", "")
    output: Any = None
    if record.status is JobStatus.COMPLETED:
        urls = [f["url"] for f in outputs(record, links)]
        output = urls if name in LIST_OUTPUT or len(urls) > 1 else urls[0]
    error = (record.error or {}).get("message") if record.status in (JobStatus.FAILED, JobStatus.CANCELLED) else None
    metrics = {}
    if record.result:
        metrics["predict_time"] = record.result["timings"]["pipeline_s"]
    return {
        "id": record.id, "model": name, "version": version_id(name), "input": note.get("replicate_input", {}),
        "output": output, "error": error, "logs": _logs(record), "status": _STATUS[record.status],
        "created_at": _iso(record.created_at), "started_at": _iso(record.started_at),
        "completed_at": _iso(record.finished_at) if record.status in FINAL_STATES else None,
        "data_removed": False, "metrics": metrics,
        "urls": {"get": f"{base}/v1/predictions/{record.id}", "cancel": f"{base}/v1/predictions/{record.id}/cancel",
                 **({"stream": f"{base}/v1/predictions/{record.id}/stream"} if note.get("replicate_stream") else {})},
    }


def _logs(record: JobRecord) -> str:
    """What a cog model prints: the seed, then a tqdm-style progress line (the SDK's `prediction.progress` parses
    it) -- the denoising steps as the engine records them."""
    if record.status is JobStatus.PENDING:
        return ""
    lines = [f"Using seed: {JobView.of(record).params.seeds[0]}"]
    step, total = record.progress_step, record.progress_total
    if record.status is JobStatus.COMPLETED and total:
        step = total
    if total:
        filled = round(10 * step / total)
        lines.append(f"{round(100 * step / total):3d}%|{'#' * filled}{' ' * (10 - filled)}| {step}/{total}")
    return "\n".join(lines) + "\n"


_WAIT = re.compile(r"^\s*wait(?:\s*=\s*(\d+))?\s*$")


async def _create(request: Request, owner_name: str, body: PredictionBody) -> JSONResponse:
    ctx = ctx_of(request)
    model = ctx.names.resolve("replicate", owner_name, "version")
    inp = validated(ReplicateInput, body.input, prefix="input")
    bad = [e for e in body.webhook_events_filter if e not in EVENTS]
    if bad:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, f"webhook_events_filter takes {', '.join(EVENTS)}",
                       "webhook_events_filter")
    base = base_url(request)
    hook = None
    if body.webhook:
        # "output" and "logs" arrive together with completion here (outputs are written all at once).
        events = tuple(e for e in ("start", "completed") if e in body.webhook_events_filter)
        hook = await ctx.webhooks.prepare(body.webhook, "replicate", base, "webhook", caller(request.scope), events)
    ask = replace(_to_ask(model, inp, ctx, request), webhook=hook,
                  dialect_note={"replicate_model": owner_name, "replicate_input": body.input,
                                **({"replicate_stream": True} if body.stream else {})})
    job_id, _ = await ctx.service.submit_image(ask, caller=caller(request.scope))
    prefer = _WAIT.match(request.headers.get("prefer", ""))
    if prefer:
        wait_s = min(60.0, float(prefer.group(1) or 60))
        record = await ctx.service.wait(job_id, wait_s)
    else:
        await asyncio.sleep(0)
        record = await record_or_404(request, job_id)
    return JSONResponse(prediction(record, ctx.links(base), owner_name), status_code=201)


@router.post("/v1/models/{owner}/{name}/predictions", openapi_extra=json_body(PredictionBody, creates_task=True))
async def create_model_prediction(owner: str, name: str, request: Request) -> JSONResponse:
    """A prediction for an official model."""
    return await _create(request, f"{owner}/{name}", validated(PredictionBody, await json_object(request)))


@router.post("/v1/predictions", openapi_extra=json_body(PredictionBody, creates_task=True))
async def create_prediction(request: Request) -> JSONResponse:
    """A prediction naming its model in `version`: "owner/name", "owner/name:version" or a version id (as
    `models.get(...).latest_version` gives it)."""
    body = validated(PredictionBody, await json_object(request))
    if not body.version:
        raise ApiError(422, ErrorCode.MISSING_FIELD, "version is required: \"owner/name\" or a version id",
                       "version")
    ctx = ctx_of(request)
    owner_name = body.version.split(":", 1)[0]
    if "/" not in owner_name:
        owner_name = next((n for n in _served_names(ctx) if version_id(n) == owner_name), owner_name)
    return await _create(request, owner_name, body)


# ---- models and versions (what client.models.get / model.versions read) ----------------------------------

_CREATED = "2026-01-01T00:00:00Z"


def version_id(owner_name: str) -> str:
    """A stable version id per model name (Replicate's are 64 hex digits)."""
    return hashlib.sha256(f"darkroom:{owner_name}".encode()).hexdigest()


def _served_names(ctx: Any) -> list[str]:
    return ctx.names.names("replicate", set(ctx.catalog.ids()))


def _version(owner_name: str) -> dict[str, Any]:
    """The version object, with the input schema darkroom accepts for the model."""
    schema = {"openapi": "3.0.2", "info": {"title": "darkroom", "version": "1"}, "paths": {},
              "components": {"schemas": {"Input": body_schema(ReplicateInput),
                                         "Output": {"type": "string", "format": "uri"}}}}
    return {"id": version_id(owner_name), "created_at": _CREATED, "cog_version": "darkroom",
            "openapi_schema": schema}


def _model_or_404(ctx: Any, owner: str, name: str) -> tuple[str, Any]:
    owner_name = f"{owner}/{name}"
    if owner_name not in _served_names(ctx):
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no model {owner_name[:100]!r} here; this server runs "
                       f"{', '.join(_served_names(ctx))}", "model")
    return owner_name, ctx.catalog.get(ctx.names.resolve("replicate", owner_name))


@router.get("/v1/models/{owner}/{name}")
async def get_model(owner: str, name: str, request: Request) -> JSONResponse:
    """The Model object of a model name this server answers to."""
    ctx = ctx_of(request)
    owner_name, spec = _model_or_404(ctx, owner, name)
    entry = ctx.catalog.weights_for(spec)
    return JSONResponse({
        "url": f"{base_url(request)}/v1/models/{owner_name}", "owner": owner, "name": name,
        "description": spec.description, "visibility": "public", "github_url": None, "paper_url": None,
        "license_url": entry.license_url, "run_count": 0, "cover_image_url": None, "default_example": None,
        "latest_version": _version(owner_name),
    })


@router.get("/v1/models/{owner}/{name}/versions")
async def list_versions(owner: str, name: str, request: Request) -> JSONResponse:
    """The model's one version (the weights darkroom runs it with)."""
    owner_name, _spec = _model_or_404(ctx_of(request), owner, name)
    return JSONResponse({"next": None, "previous": None, "results": [_version(owner_name)]})


@router.get("/v1/models/{owner}/{name}/versions/{version}")
async def get_version(owner: str, name: str, version: str, request: Request) -> JSONResponse:
    """The version object, by its id."""
    owner_name, _spec = _model_or_404(ctx_of(request), owner, name)
    if version != version_id(owner_name):
        raise ApiError(404, ErrorCode.NOT_FOUND, f"{owner_name} has one version here: {version_id(owner_name)}",
                       "version")
    return JSONResponse(_version(owner_name))


@router.get("/v1/predictions/{prediction_id}")
async def get_prediction(prediction_id: str, request: Request) -> JSONResponse:
    """The prediction object."""
    return JSONResponse(prediction(await record_or_404(request, prediction_id, "prediction_id"),
                                   ctx_of(request).links(base_url(request))))


@router.get("/v1/predictions/{prediction_id}/stream")
async def stream_prediction(prediction_id: str, request: Request) -> StreamingResponse:
    """Replicate's event stream (a prediction made with `stream: true`; what `replicate.stream()` reads): `logs`
    events with the seed and the denoising progress, one `output` event per output URL, then `done` (`error` for a
    failure). Live previews are not sent here: Replicate's protocol has no event for them, and its SDK refuses an
    event name it does not know; the darkroom task stream of the same id carries them."""
    ctx = ctx_of(request)
    await record_or_404(request, prediction_id, "prediction_id")
    links = ctx.links(base_url(request))

    async def stream() -> AsyncIterator[str]:
        sent = 0
        logged = ""
        async for record in watch(request, prediction_id):
            if record is None:
                continue
            logs = _logs(record)
            if logs != logged and logs.startswith(logged):
                for line in logs[len(logged):].splitlines():
                    sent += 1
                    yield f"event: logs\nid: {sent}\ndata: {line}\n\n"
                logged = logs
            elif logs != logged:  # the progress line moved on: send it again
                sent += 1
                yield f"event: logs\nid: {sent}\ndata: {logs.splitlines()[-1]}\n\n"
                logged = logs
            if record.status not in FINAL_STATES:
                continue
            if record.status is JobStatus.COMPLETED:
                for url in (f["url"] for f in outputs(record, links)):
                    sent += 1
                    yield f"event: output\nid: {sent}\ndata: {url}\n\n"
            elif record.status is JobStatus.FAILED:
                sent += 1
                message = (record.error or {}).get("message", "the prediction failed")
                yield f"event: error\nid: {sent}\ndata: {json.dumps({'detail': message})}\n\n"
            reason = {"reason": "canceled"} if record.status is JobStatus.CANCELLED else {}
            yield f"event: done\nid: {sent + 1}\ndata: {json.dumps(reason)}\n\n"
            return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.post("/v1/predictions/{prediction_id}/cancel")
async def cancel_prediction(prediction_id: str, request: Request) -> JSONResponse:
    """Cancel; answers with the prediction (canceled, or already final)."""
    ctx = ctx_of(request)
    await record_or_404(request, prediction_id, "prediction_id")
    await ctx.service.cancel(prediction_id)
    await asyncio.sleep(0)
    return JSONResponse(prediction(await record_or_404(request, prediction_id), ctx.links(base_url(request))))


def webhook_payload(record: JobRecord, base: str, _event: str, ctx: Any) -> dict[str, Any]:
    """Replicate's webhook body is the prediction object."""
    return prediction(record, ctx.links(base))


def error_shape(err: ApiError) -> dict[str, Any]:
    """darkroom's error plus Replicate's problem-details keys (the client raises ReplicateError from them)."""
    return {**err.body(), "title": str(err.code), "detail": err.message, "status": err.status}


DIALECT = Dialect(
    "replicate", (router, replicate_files.router), prefixes=("/v1/predictions", "/v1/files"),
    # /v1/models/{owner}/{name}[/...]: OpenAI's /v1/models has no owner segment.
    owns_path=lambda p: p.startswith("/v1/models/") and p.count("/") >= 4,
    error_shape=error_shape, webhook=webhook_payload, tag="Replicate", doc_order=30, claim_order=2,
    tag_description="Replicate's predictions, models and files APIs.",
    auth_schemes=("Bearer", "Token"), request_headers=("Prefer",),
    field_policies=(FieldPolicy("Replicate", "POST /v1/models/<owner>/<name>/predictions, /v1/predictions "
                                "(`input`)", FIELD_POLICY, ReplicateInput,
                                source="https://replicate.com/docs/reference/http"),),
    compare_client=ReplicateClient)
