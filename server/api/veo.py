"""Veo the way Google's clients call it: long-running `predictLongRunning` operations, polled until done.

Two surfaces, one model table (configs/dialects.toml [veo]):
- The Gemini API (generativelanguage): `POST /v1beta/models/{model}:predictLongRunning` answers an operation
  `models/{model}/operations/{id}`; `GET /v1beta/models/{model}/operations/{id}` polls it; a finished one lists
  `response.generateVideoResponse.generatedSamples[].video.uri`, a signed URL of the MP4 (downloaded with the key
  or without it, `?alt=media` accepted).
- Vertex AI (what `google-genai`'s `generate_videos` calls; in express mode with an API key):
  `POST /{v1|v1beta1}/[projects/{p}/locations/{l}/]publishers/google/models/{model}:predictLongRunning`, then
  `POST ...:fetchPredictOperation {operationName}`; a finished one carries `response.videos[].bytesBase64Encoded`
  (Vertex's answer when no `storageUri` is given, and darkroom writes to no bucket).

Both take `instances[0]` {prompt, image, lastFrame, referenceImages, video} and `parameters`; what the serving family
cannot do is refused with the field named (FIELD_POLICY). Sources: https://ai.google.dev/gemini-api/docs/video and
https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/veo-video-generation
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pipelines.registry import family_class
from server.api.auth import caller
from server.api.dialect import Dialect, FieldPolicy
from server.api.dialect_io import base_url, ctx_of, failure, file_b64, json_object, outputs, record_or_404, validated
from server.api.gemini import error_shape
from server.api.openapi_doc import json_body
from server.asks import ImageInput, VideoAsk
from server.errors import ApiError, ErrorCode
from server.jobs.store import FINAL_STATES, JobRecord, JobStatus
from server.resolve import SEED_MAX

router = APIRouter()

FIELD_POLICY = {
    "instances[0].prompt": "mapped: prompt",
    "instances[0].image": "mapped: first frame (required: the stand-ins animate a first frame; bytesBase64Encoded, "
                          "or gcsUri as an http(s) URL)",
    "instances[0].lastFrame": "mapped: last frame, on ids whose family ends on a given frame (veo-3 and veo-3-fast: "
                              "LTX-2 keyframe conditioning); refused elsewhere (unsupported_feature)",
    "instances[0].referenceImages": "refused (unsupported_feature): neither LTX-2 nor Wan takes subject/style "
                                    "reference images",
    "instances[0].video": "refused (unsupported_feature): extending a Veo video; use the OpenAI Videos "
                          "extensions route",
    "parameters.sampleCount": "mapped: 1 clip (more refused: one clip per operation)",
    "parameters.durationSeconds": "mapped: duration",
    "parameters.aspectRatio": "mapped: aspect_ratio",
    "parameters.resolution": "mapped: resolution (720p, 1080p as the id lists)",
    "parameters.seed": "mapped: seed",
    "parameters.negativePrompt": "mapped: negative_prompt",
    "parameters.generateAudio": "mapped: generate_audio",
    "parameters.fps": "mapped: fps",
    "parameters.enhancePrompt": "warned when true: no prompt rewriting offline",
    "parameters.personGeneration": "warned: no person filter runs locally",
    "parameters.compressionQuality": "warned: clips use fixed encoder settings",
    "parameters.storageUri": "refused (unsupported_feature): darkroom writes to no bucket; clips come back inline",
}
_OP = "operations/"


class _Media(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    bytesBase64Encoded: str | None = Field(None, max_length=30_000_000)  # Google's field names
    gcsUri: str | None = Field(None, max_length=4000)
    mimeType: str | None = Field(None, max_length=100)


class _Reference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: _Media | None = None
    referenceType: str | None = None


class VeoInstance(BaseModel):
    """instances[0]."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    image: _Media | None = None
    lastFrame: _Media | None = None
    referenceImages: list[_Reference] | None = Field(None, max_length=8)
    video: _Media | None = None


class VeoParameters(BaseModel):
    """parameters."""

    model_config = ConfigDict(extra="forbid")

    sampleCount: int = Field(1, ge=1, le=4)
    durationSeconds: int | None = Field(None, ge=1, le=60)
    aspectRatio: str | None = Field(None, max_length=20)
    resolution: str | None = Field(None, max_length=10)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    negativePrompt: str | None = Field(None, max_length=4000)
    generateAudio: bool | None = None
    fps: int | None = Field(None, ge=1, le=60)
    enhancePrompt: bool | None = None
    personGeneration: str | None = Field(None, max_length=40)
    compressionQuality: str | None = Field(None, max_length=40)
    storageUri: str | None = Field(None, max_length=4000)


class PredictBody(BaseModel):
    """POST ...:predictLongRunning."""

    model_config = ConfigDict(extra="forbid")

    instances: list[VeoInstance] = Field(min_length=1, max_length=1)
    parameters: VeoParameters = Field(default_factory=VeoParameters)


class FetchBody(BaseModel):
    """POST ...:fetchPredictOperation (Vertex)."""

    model_config = ConfigDict(extra="forbid")

    operationName: str = Field(min_length=1, max_length=400)


def _frame(media: _Media, field: str) -> ImageInput:
    if media.bytesBase64Encoded:
        try:
            return ImageInput(field=field, data=base64.b64decode(media.bytesBase64Encoded, validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(400, ErrorCode.INVALID_IMAGE, f"{field}.bytesBase64Encoded is not valid base64",
                           field) from None
    if media.gcsUri:
        if not media.gcsUri.lower().startswith(("http://", "https://")):
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "gs:// URIs cannot be read offline; send the image's "
                           "bytes (bytesBase64Encoded) or an http(s) URL", f"{field}.gcsUri")
        return ImageInput(field=field, url=media.gcsUri)
    raise ApiError(422, ErrorCode.MISSING_FIELD, f"{field} needs bytesBase64Encoded or gcsUri", field)


def _ask(request: Request, model_name: str, body: PredictBody) -> VideoAsk:
    ctx = ctx_of(request)
    model = ctx.names.resolve("veo", model_name)
    inst, par = body.instances[0], body.parameters
    refuse = {"instances[0].referenceImages": inst.referenceImages and "reference images (subject/style) are not "
              "taken by the local video models; send image (and lastFrame) only",
              "instances[0].video": inst.video and "extending a video is not supported here; use POST "
              "/v1/videos/extensions",
              "parameters.storageUri": par.storageUri and "darkroom writes to no bucket; leave storageUri out and "
              "the clip comes back in the operation",
              "parameters.sampleCount": par.sampleCount > 1 and "one clip per operation; send sampleCount 1"}
    for field, message in refuse.items():
        if message:
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, message, field)
    if inst.image is None:
        raise ApiError(422, ErrorCode.MISSING_FIELD, "instances[0].image is required: the local video models "
                       "animate a first frame (image-to-video)", "instances[0].image")
    frames = [_frame(inst.image, "instances[0].image")]
    if inst.lastFrame is not None:
        if not getattr(family_class(ctx.catalog.get_video(model).family), "supports_last_frame", False):
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, f"{model_name} cannot end on a given frame here (its "
                           "stand-in conditions on the first frame only); leave lastFrame out",
                           "instances[0].lastFrame")
        frames.append(_frame(inst.lastFrame, "instances[0].lastFrame"))
    warnings = [msg for cond, msg in (
        (par.enhancePrompt, "enhancePrompt: no prompt rewriting offline"),
        (par.personGeneration is not None, "personGeneration: no person filter runs on this local server"),
        (par.compressionQuality is not None, "compressionQuality: clips use fixed encoder settings")) if cond]
    return VideoAsk(model=model, prompt=inst.prompt, frames=tuple(frames), duration=par.durationSeconds,
                    resolution=par.resolution, aspect_ratio=par.aspectRatio or "auto", fps=par.fps,
                    generate_audio=par.generateAudio, negative_prompt=par.negativePrompt, seed=par.seed,
                    warnings=tuple(warnings), dialect_note={"veo_model": model_name})


async def _submit(request: Request, model: str) -> str:
    body = validated(PredictBody, await json_object(request))
    job_id, _ = await ctx_of(request).service.submit_video(_ask(request, model, body), caller=caller(request.scope))
    return job_id


def _error(record: JobRecord) -> dict[str, Any]:
    err = failure(record)
    body = error_shape(err)["error"]
    return {"code": {400: 3, 404: 5, 409: 10, 422: 3, 504: 4}.get(err.status, 13), "message": body["message"],
            "details": body["details"]}


@router.post("/v1beta/models/{model}:predictLongRunning", openapi_extra=json_body(PredictBody, creates_task=True))
async def gemini_predict(model: str, request: Request) -> JSONResponse:
    """Start a Veo clip (Gemini API): the operation to poll."""
    job_id = await _submit(request, model)
    return JSONResponse({"name": f"models/{model}/{_OP}{job_id}"})


@router.get("/v1beta/models/{model}/operations/{operation}")
async def gemini_operation(model: str, operation: str, request: Request) -> JSONResponse:
    """A Veo operation (Gemini API): done with the clip's URI, or with an error."""
    record = await record_or_404(request, operation, "name")
    body: dict[str, Any] = {"name": f"models/{model}/{_OP}{record.id}", "done": record.status in FINAL_STATES}
    if record.status is JobStatus.COMPLETED:
        body["response"] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
            "generateVideoResponse": {"generatedSamples": [
                {"video": {"uri": f["url"], "mimeType": "video/mp4"}}
                for f in outputs(record, ctx_of(request).links(base_url(request)))]}}
    elif record.status in FINAL_STATES:
        body["error"] = _error(record)
    return JSONResponse(body)


_VERTEX = "/{version}/{scope:path}models/{model}"


@router.post(_VERTEX + ":predictLongRunning", openapi_extra=json_body(PredictBody, creates_task=True))
async def vertex_predict(version: str, scope: str, model: str, request: Request) -> JSONResponse:
    """Start a Veo clip (Vertex AI, `publishers/google/models/...`): the operation to fetch."""
    _check_vertex(version, scope)
    job_id = await _submit(request, model)
    return JSONResponse({"name": f"{scope}models/{model}/{_OP}{job_id}"})


@router.post(_VERTEX + ":fetchPredictOperation", openapi_extra=json_body(FetchBody))
async def vertex_fetch(version: str, scope: str, model: str, request: Request) -> JSONResponse:
    """A Veo operation (Vertex AI): done with the clip inline (base64), or with an error."""
    _check_vertex(version, scope)
    body = validated(FetchBody, await json_object(request))
    name = body.operationName
    record = await record_or_404(request, name.rpartition(_OP)[2] if _OP in name else "", "operationName")
    out: dict[str, Any] = {"name": name, "done": record.status in FINAL_STATES}
    if record.status is JobStatus.COMPLETED:
        ctx = ctx_of(request)
        out["response"] = {
            "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
            "raiMediaFilteredCount": 0,
            "videos": [{"bytesBase64Encoded": file_b64(ctx, v["file"]), "mimeType": "video/mp4"}
                       for v in (record.result or {}).get("videos", [])]}
    elif record.status in FINAL_STATES:
        out["error"] = _error(record)
    return JSONResponse(out)


def _check_vertex(version: str, scope: str) -> None:
    parts = scope.strip("/").split("/") if scope else []
    publisher = parts[-2:] == ["publishers", "google"]
    project = len(parts) == 6 and parts[0] == "projects" and parts[2] == "locations"
    if version not in ("v1", "v1beta1") or not publisher or not (len(parts) == 2 or project):
        raise ApiError(404, ErrorCode.NOT_FOUND, "no such route or resource")


def _owns(path: str) -> bool:
    return path.endswith((":predictLongRunning", ":fetchPredictOperation")) or (
        path.startswith("/v1beta/models/") and f"/{_OP}" in path)


DIALECT = Dialect(
    "veo", (router,), owns_path=_owns, error_shape=error_shape, tag="Veo", doc_order=55, claim_order=0,
    tag_description="Veo's long-running video operations: the Gemini API (predictLongRunning, operations) and "
                    "Vertex AI (predictLongRunning, fetchPredictOperation; what google-genai's generate_videos "
                    "calls).",
    key_headers=("x-goog-api-key",), request_headers=("x-goog-api-client", "x-goog-user-project"),
    field_policies=(FieldPolicy("Veo", "POST .../models/<veo model>:predictLongRunning", FIELD_POLICY,
                                source="https://ai.google.dev/gemini-api/docs/video, https://cloud.google.com/"
                                       "vertex-ai/generative-ai/docs/model-reference/veo-video-generation"),))
