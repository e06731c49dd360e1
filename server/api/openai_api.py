"""OpenAI's Images and Videos APIs: /v1/images/generations, /v1/images/edits, /v1/videos, /v1/models.

A thin translation: OpenAI's fields become an ImageAsk / VideoAsk, the job's files come back as
`data[].b64_json` (or `url`) and Video objects. Model names map through configs/dialects.toml.
Every field OpenAI defines is either mapped, answered with a warning, or refused with a 4xx
(FIELD_POLICY, checked by tests/unit/test_dialect_parity.py).
"""

from __future__ import annotations

import io
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import ConfigDict, Field

from compare.clients import OpenAIClient
from server.api import openai_videos
from server.api.auth import caller
from server.api.dialect import Dialect, FieldPolicy
from server.api.dialect_io import (
    InlineImages,
    base_url,
    ctx_of,
    json_object,
    outputs,
    validated,
    wait_done,
)
from server.api.lora_fields import LoraListField, refs_from_items
from server.api.openai_stream import image_event_stream
from server.api.openapi_doc import json_body
from server.api.request_body import content_kind, read_json_or_multipart
from server.asks import ImageAsk, ImageInput
from server.errors import ApiError, ErrorCode
from server.jobs.store import JobRecord
from server.jobs.view import JobView

router = APIRouter()

# quality -> share of the model's default steps (GPT Image's low/medium/high trade speed for detail the same way).
QUALITY_STEPS = {"low": 0.35, "medium": 0.6, "standard": 0.6, "high": 1.0, "hd": 1.0, "auto": 1.0}

FIELD_POLICY: dict[str, dict[str, str]] = {
    "images": {
        "prompt": "mapped: prompt",
        "model": "mapped: configs/dialects.toml [openai.images]",
        "image": "mapped: source images (multipart `image` / `image[]`, up to the model's limit)",
        "images": "mapped: source images given as [{image_url}] (JSON edits)",
        "mask": "mapped: mask_url (alpha 0 = editable becomes white = repaint)",
        "n": "mapped: num_images",
        "size": "mapped: exact output size (`auto`: the model's default tier, source aspect)",
        "quality": "mapped: share of the model's default steps (low 35 %, medium 60 %, high/auto 100 %)",
        "output_format": "mapped: output_format",
        "response_format": "mapped: url or b64_json; unset, url for dall-e-* models and b64_json for GPT Image "
                           "ones, as OpenAI answers",
        "background": "mapped: auto/opaque; transparent refused (unsupported_feature)",
        "output_compression": "refused unless 100 (unsupported_feature): outputs use fixed encoder settings",
        "moderation": "warned: no moderation runs locally",
        "user": "warned: kept by hosted providers for abuse monitoring; not used locally",
        "input_fidelity": "warned: the stand-ins have no fidelity switch",
        "style": "refused (unsupported_feature): a DALL-E 3 option",
        "stream": "mapped: Server-Sent Events `image_generation.*` / `image_edit.*` (partial images, then one "
                  "completed event per image; a failure is an `error` event)",
        "partial_images": "mapped: 0-3 live previews of the forming image (latent projections, at most that many, "
                          "spread over the denoising steps; fewer when the render is quicker than the previews)",
        "loras": "mapped: darkroom extension (the SDK's extra_body), LoRA adapters [{id or url, scale}]",
    },
}


class GenerationsBody(LoraListField):
    """POST /v1/images/generations (and the JSON form of /v1/images/edits)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=32000)
    model: str = "gpt-image-1"
    n: int = Field(1, ge=1)  # the id's own upper limit is checked by the service, which names it
    size: str = Field("auto", max_length=20)
    quality: Literal["low", "medium", "high", "auto", "standard", "hd"] = "auto"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    response_format: Literal["b64_json", "url"] | None = None
    background: Literal["transparent", "opaque", "auto"] = "auto"
    output_compression: int | None = Field(None, ge=0, le=100)
    moderation: Literal["low", "auto"] | None = None
    user: str | None = Field(None, max_length=256)
    input_fidelity: Literal["high", "low"] | None = None
    style: str | None = None
    stream: bool | None = None
    partial_images: int | None = Field(None, ge=0, le=3)
    images: list[dict[str, str]] = Field(default_factory=list, max_length=16)
    mask: dict[str, str] | None = None


def _parse_size(size: str) -> tuple[int, int] | None:
    if size == "auto":
        return None
    w, _, h = size.partition("x")
    if not (w.isdigit() and h.isdigit()):
        raise ApiError(422, ErrorCode.INVALID_REQUEST, f"size must be auto or WIDTHxHEIGHT; got {size[:20]!r}",
                       "size")
    return int(w), int(h)


def _refuse_and_warn(body: GenerationsBody) -> list[str]:
    def refuse(field: str, message: str) -> ApiError:
        return ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, message, field)

    if body.background == "transparent":
        raise refuse("background", "transparent backgrounds are not supported by the local models; send "
                     "background=opaque or auto")
    if body.output_compression is not None and body.output_compression != 100:
        raise refuse("output_compression", "darkroom encodes outputs with fixed settings; remove output_compression")
    if body.style is not None:
        raise refuse("style", "style is a DALL-E 3 option; remove it")
    if body.partial_images and not body.stream:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, "partial_images needs stream=true", "partial_images")
    warnings = []
    if body.moderation is not None:
        warnings.append("moderation: no moderation runs on this local server")
    if body.user is not None:
        warnings.append("user: not used by this local server")
    if body.input_fidelity is not None:
        warnings.append("input_fidelity: the local stand-in has no fidelity switch; ignored")
    return warnings


def openai_mask(data: bytes) -> bytes:
    """OpenAI masks mark editable pixels with alpha 0; darkroom's are white where to repaint."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if "A" not in im.getbands():
                raise ApiError(422, ErrorCode.INVALID_IMAGE, "the mask must be a PNG with an alpha channel "
                               "(transparent = editable)", "mask")
            alpha = im.getchannel("A")
    except ApiError:
        raise
    except Exception:  # noqa: BLE001 - decoder text is never echoed
        raise ApiError(422, ErrorCode.INVALID_IMAGE, "the mask is not a readable PNG", "mask") from None
    out = io.BytesIO()
    alpha.point(lambda a: 255 if a < 128 else 0).save(out, "PNG")
    return out.getvalue()


_EDIT_FILES = {"image": "image", "image[]": "image", "mask": "mask"}


def _images_response(request: Request, body: GenerationsBody, record: JobRecord, warnings: list[str]) -> Response:
    inline = InlineImages(ctx_of(request))
    files = outputs(record, ctx_of(request).links(base_url(request)))
    # OpenAI's default: URLs from the DALL-E models, base64 from GPT Image (which has no URLs at all).
    response_format = body.response_format or ("url" if body.model.startswith("dall-e") else "b64_json")
    if response_format == "url":
        data = [{"url": f["url"]} for f in files]
    else:
        data = [{"b64_json": inline.ref(f["file"])} for f in files]
    first = files[0]
    return inline.response({
        "created": int(record.created_at),
        "data": data,
        "background": "opaque",
        "output_format": body.output_format,
        "quality": body.quality,
        "size": f"{first['width']}x{first['height']}",
        "usage": {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
                  "output_tokens": 0, "total_tokens": 0},
        "darkroom": {"task_id": record.id, "model": record.model,
                     "warnings": JobView.of(record).warnings + warnings},
    })


async def _submit_images(request: Request, body: GenerationsBody, sources: list[ImageInput],
                         mask: ImageInput | None) -> Response:
    ctx = ctx_of(request)
    warnings = _refuse_and_warn(body)
    model = ctx.names.resolve("openai.images", body.model)
    spec = ctx.catalog.get(model)
    steps = max(1, round(spec.defaults.num_inference_steps * QUALITY_STEPS[body.quality]))
    ask = ImageAsk(model=model, prompt=body.prompt, sources=tuple(sources), references=(), mask=mask,
                   num_images=body.n, num_images_field="n", output_format=body.output_format, num_inference_steps=steps,
                   size=_parse_size(body.size), size_field="size", loras=refs_from_items(body.loras),
                   previews=bool(body.stream and body.partial_images))
    job_id, _ = await ctx.service.submit_image(ask, caller=caller(request.scope))
    if body.stream:
        return image_event_stream(request, job_id, body, "image_edit" if sources else "image_generation")
    record = await wait_done(request, job_id)
    return _images_response(request, body, record, warnings)


@router.post("/v1/images/generations", openapi_extra=json_body(GenerationsBody, creates_task=True, waits=True))
async def images_generations(request: Request) -> Response:
    """Text to image (OpenAI's generations)."""
    body = validated(GenerationsBody, await json_object(request))
    if body.images or body.mask:
        raise ApiError(422, ErrorCode.UNKNOWN_FIELD, "images and mask belong to /v1/images/edits", "images")
    return await _submit_images(request, body, [], None)


@router.post("/v1/images/edits", openapi_extra=json_body(GenerationsBody, multipart=True, creates_task=True,
                                                        waits=True))
async def images_edits(request: Request) -> Response:
    """Edit from one or more images (multipart files, or JSON with images[].image_url), with an optional mask."""
    mask_input: ImageInput | None = None
    fields, files = await read_json_or_multipart(request, _EDIT_FILES, 17, "files in image / image[] and mask, "
                                                 "or JSON with images[].image_url")
    if content_kind(request) == "multipart":
        if "stream" in fields:  # form fields are text
            fields["stream"] = str(fields["stream"]).lower() in ("1", "true")
        body = validated(GenerationsBody, fields)
        sources = [ImageInput(field="image", data=u.data) for u in files.get("image", [])]
        masks = files.get("mask", [])
        if len(masks) > 1:
            raise ApiError(422, ErrorCode.TOO_MANY_IMAGES, "send at most one mask", "mask")
        if masks:
            mask_input = ImageInput(field="mask", data=openai_mask(masks[0].data))
    else:
        body = validated(GenerationsBody, fields)
        sources = []
        for i, item in enumerate(body.images):
            if "image_url" not in item:
                raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "only images[].image_url is supported (no Files "
                               "API here)", f"images[{i}]")
            sources.append(ImageInput(field=f"images[{i}]", url=item["image_url"]))
        if body.mask:
            if "image_url" not in body.mask:
                raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "only mask.image_url is supported", "mask")
            fetched = await ctx_of(request).service.fetcher.fetch(body.mask["image_url"], "mask")
            mask_input = ImageInput(field="mask", data=openai_mask(fetched))
    if not sources:
        raise ApiError(422, ErrorCode.MISSING_FIELD, "an edit needs at least one image", "image")
    return await _submit_images(request, body, sources, mask_input)


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    """OpenAI model names this server answers to."""
    names = ctx_of(request).names
    now = int(time.time())
    data = [{"id": n, "object": "model", "created": now, "owned_by": "darkroom"}
            for n in names.names("openai.images") + names.names("openai.videos")]
    return JSONResponse({"object": "list", "data": data})


def error_shape(err: ApiError) -> dict[str, Any]:
    """OpenAI's {"error": {message, type, param, code}} with darkroom's field kept."""
    return {"error": {**err.body()["error"], "type": "invalid_request_error" if err.status < 500 else "server_error",
                      "param": err.field}}


DIALECT = Dialect(
    "openai", (router, openai_videos.router), prefixes=("/v1/images/", "/v1/videos", "/v1/models"), error_shape=error_shape,
    tag="OpenAI", doc_order=10, claim_order=4,
    tag_description="OpenAI's Images and Videos APIs (point the openai SDK's base_url at .../v1).",
    auth_schemes=("Bearer",), request_headers=("OpenAI-Organization", "OpenAI-Project"),
    field_policies=(FieldPolicy("OpenAI images", "POST /v1/images/generations, /v1/images/edits",
                                FIELD_POLICY["images"], GenerationsBody, frozenset({"image", "mask"}),
                                source="https://platform.openai.com/docs/api-reference/images (streaming: "
                                       "https://platform.openai.com/docs/api-reference/images-streaming)"),
                    FieldPolicy("OpenAI videos", "POST /v1/videos", openai_videos.FIELD_POLICY, openai_videos.VideoBody,
                                source=openai_videos.SOURCE),
                    FieldPolicy("OpenAI videos: the other routes", "/v1/videos/...", openai_videos.ROUTE_POLICY,
                                source=openai_videos.SOURCE)),
    compare_client=OpenAIClient)
