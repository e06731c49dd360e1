"""Gemini's generateContent for the image models: POST /v1beta/models/{model}:generateContent (and /v1/..., where
google-genai sends it when given a base URL) with text and
inline_data parts and generationConfig.imageConfig {aspectRatio, imageSize} ->
candidates[].content.parts[].inlineData. Model names map through configs/dialects.toml [gemini].
Accepts the REST API's snake_case and the SDKs' camelCase spellings.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError

from compare.clients import GeminiClient
from server.api.auth import caller
from server.api.dialect import Dialect, FieldPolicy
from server.api.dialect_io import InlineImages, ctx_of, json_object, outputs, wait_done
from server.api.lora_fields import LoraItem, refs_from_items
from server.api.openapi_doc import route_facts
from server.asks import ImageAsk, ImageInput, LoraRef
from server.errors import ApiError, ErrorCode
from server.jobs.view import JobView
from server.resolve import SEED_MAX

router = APIRouter()

IMAGE_SIZES = {"512": "512", "1K": "1K", "2K": "2K", "4K": "4K"}

FIELD_POLICY = {
    "contents": "mapped: the last user turn's text parts -> prompt, inline_data parts -> images",
    "generationConfig.responseModalities": "mapped: must include IMAGE (TEXT-only refused)",
    "generationConfig.imageConfig.aspectRatio": "mapped: aspect_ratio",
    "generationConfig.imageConfig.imageSize": "mapped: quality tier",
    "generationConfig.candidateCount": "mapped: num_images (one image per candidate)",
    "generationConfig.seed": "mapped: seed",
    "generationConfig.temperature": "warned: hosted sampling option",
    "generationConfig.topP": "warned: hosted sampling option",
    "generationConfig.topK": "warned: hosted sampling option",
    "generationConfig.maxOutputTokens": "warned: hosted sampling option",
    "tools": "refused (unsupported_feature): Google Search grounding needs the live web",
    "loras": "mapped: darkroom extension (top level), LoRA adapters [{id or url, scale}]",
    "safetySettings": "warned: no safety filter runs locally",
    "systemInstruction": "mapped: prepended to the prompt",
    "contents[].parts[].file_data": "refused (unsupported_feature): no Files API here; send inline_data",
}

_WARN_KEYS = ("temperature", "topP", "topK", "maxOutputTokens")
_KNOWN_CONFIG = {"responseModalities", "imageConfig", "candidateCount", "seed", *_WARN_KEYS}
_KNOWN_TOP = {"contents", "generationConfig", "tools", "safetySettings", "systemInstruction", "loras"}


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def camelise(value: Any) -> Any:
    """snake_case keys -> camelCase, recursively (inline_data -> inlineData, mime_type -> mimeType)."""
    if isinstance(value, dict):
        return {_camel(k): camelise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camelise(v) for v in value]
    return value


def decode_b64(text: str) -> bytes:
    """Standard or URL-safe base64 (the Google SDKs send the latter), padding optional."""
    text = text.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _parts_text(parts: list[dict[str, Any]]) -> str:
    return "\n".join(p["text"] for p in parts if isinstance(p.get("text"), str))


def _ask(model: str, body: dict[str, Any], ctx: Any) -> ImageAsk:
    unknown = sorted(set(body) - _KNOWN_TOP)
    if unknown:
        raise ApiError(422, ErrorCode.UNKNOWN_FIELD, f"unknown field {unknown[0]!r}", unknown[0])
    if body.get("tools"):
        raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "Google Search grounding needs the hosted service's live "
                       "web search; darkroom runs offline, so remove tools", "tools")
    config = _generation_config(body)
    warnings = [f"generationConfig.{k}: a hosted sampling option, not used locally" for k in _WARN_KEYS if k in config]
    if body.get("safetySettings"):
        warnings.append("safetySettings: no safety filter runs on this local server")
    prompt, parts, earlier_turns = _instruction(body)
    if earlier_turns:
        warnings.append("earlier turns of the conversation are not used; only the last user turn is rendered")
    images = _inline_images(parts)
    spec = ctx.catalog.get(model)
    n_src = min(len(images), spec.max_source_images)
    image_config = config.get("imageConfig") or {}
    size, count, seed = _size_count_seed(config)
    return ImageAsk(model=model, prompt=prompt[:4000], sources=tuple(images[:n_src]),
                    references=tuple(images[n_src:]), aspect_ratio=image_config.get("aspectRatio") or "auto",
                    quality=IMAGE_SIZES.get(size) if size else None, num_images=count,
                    num_images_field="generationConfig.candidateCount", seed=seed, output_format="png",
                    warnings=tuple(warnings), loras=_loras(body.get("loras")))


def _loras(value: Any) -> tuple[LoraRef, ...]:
    """darkroom's extension field (top level, beside `contents`): [{id | url, scale}]."""
    if value is None:
        return ()
    try:
        items = TypeAdapter(list[LoraItem]).validate_python(value)
    except ValidationError:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, "loras must be a list of {id | url, scale} objects (at most "
                       "4)", "loras") from None
    return refs_from_items(items)


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    """generationConfig, checked: known keys only, and IMAGE among the response modalities."""
    config = body.get("generationConfig") or {}
    unknown = sorted(set(config) - _KNOWN_CONFIG)
    if unknown:
        raise ApiError(422, ErrorCode.UNKNOWN_FIELD, f"unknown field 'generationConfig.{unknown[0]}'",
                       f"generationConfig.{unknown[0]}")
    modalities = [str(m).upper() for m in config.get("responseModalities") or ["IMAGE"]]
    if "IMAGE" not in modalities:
        raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "darkroom's models make images: include IMAGE in "
                       "responseModalities", "generationConfig.responseModalities")
    return config


def _instruction(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]], bool]:
    """(the instruction: system text and the last user turn's text, that turn's parts, whether earlier turns were
    sent)."""
    contents = body.get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    users = [c for c in contents or [] if isinstance(c, dict) and c.get("role", "user") == "user"]
    if not users:
        raise ApiError(422, ErrorCode.MISSING_FIELD, "contents needs a user turn with a text part", "contents")
    parts = users[-1].get("parts") or []
    system = body.get("systemInstruction") or {}
    prompt = "\n".join(t for t in (_parts_text(system.get("parts") or []), _parts_text(parts)) if t).strip()
    if not prompt:
        raise ApiError(422, ErrorCode.MISSING_FIELD, "the user turn needs a text part (the instruction)", "contents")
    return prompt, parts, len(contents or []) > 1


def _inline_images(parts: list[dict[str, Any]]) -> list[ImageInput]:
    """The turn's inline_data images, in order (file_data needs the Files API: refused)."""
    images: list[ImageInput] = []
    for i, part in enumerate(parts):
        if "fileData" in part:
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "file_data parts need the Files API; send the image "
                           "as inline_data", f"contents.parts[{i}]")
        inline = part.get("inlineData")
        if inline:
            try:
                data = decode_b64(inline.get("data", ""))
            except (binascii.Error, ValueError):
                raise ApiError(400, ErrorCode.INVALID_IMAGE, "inline_data is not valid base64",
                               f"contents.parts[{i}]") from None
            images.append(ImageInput(field=f"contents.parts[{i}]", data=data))
    return images


def _size_count_seed(config: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    """imageConfig.imageSize, candidateCount and seed, each checked."""
    size = (config.get("imageConfig") or {}).get("imageSize")
    if size is not None and size not in IMAGE_SIZES:
        raise ApiError(422, ErrorCode.UNSUPPORTED_QUALITY, "imageSize must be 512, 1K, 2K or 4K",
                       "generationConfig.imageConfig.imageSize")
    count = config.get("candidateCount")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
        raise ApiError(422, ErrorCode.INVALID_REQUEST, "candidateCount must be a whole number",
                       "generationConfig.candidateCount")
    seed = config.get("seed")
    if seed is not None and not (isinstance(seed, int) and 0 <= seed <= SEED_MAX):
        raise ApiError(422, ErrorCode.INVALID_REQUEST, f"seed must be an integer 0-{SEED_MAX}",
                       "generationConfig.seed")
    return size, count, seed


# Gemini's GenerateContentRequest, as far as image generation reads it (camelCase or snake_case keys).
_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["contents"],
    "properties": {"contents": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                   "generationConfig": {"type": "object"}, "generation_config": {"type": "object"}}}}}},
             **route_facts(creates_task=True, waits=True)}


@router.post("/v1beta/models/{model}:generateContent", openapi_extra=_BODY_DOC)
@router.post("/v1/models/{model}:generateContent", openapi_extra=_BODY_DOC)
async def generate_content(model: str, request: Request) -> Response:
    """Image generation and editing in Gemini's shape (synchronous, like the hosted API)."""
    ctx = ctx_of(request)
    try:
        local = ctx.names.resolve("gemini", model)
    except ApiError as exc:
        # Gemini answers an unknown model with 404 NOT_FOUND (google-genai raises ClientError for it).
        raise ApiError(404, exc.code, exc.message, exc.field) from None
    ask = _ask(local, camelise(await json_object(request)), ctx)
    job_id, _ = await ctx.service.submit_image(ask, caller=caller(request.scope))
    record = await wait_done(request, job_id)
    files = outputs(record, ctx.links(""))
    inline = InlineImages(ctx)
    candidates = [{"content": {"role": "model", "parts": [{"inlineData": {"mimeType": f["content_type"],
                                                                          "data": inline.ref(f["file"])}}]},
                   "finishReason": "STOP", "index": i} for i, f in enumerate(files)]
    return inline.response({
        "candidates": candidates,
        "usageMetadata": {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0},
        "modelVersion": model, "responseId": job_id,
        "darkroom": {"task_id": job_id, "model": local, "warnings": JobView.of(record).warnings},
    })


_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  409: "ABORTED", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
                  500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def error_shape(err: ApiError) -> dict[str, Any]:
    """Google's {"error": {code, message, status}} (darkroom's code and field under details)."""
    return {"error": {"code": err.status, "message": err.message, "status": _GOOGLE_STATUS.get(err.status, "UNKNOWN"),
                      "details": [{"darkroom_code": str(err.code), "field": err.field}]}}


DIALECT = Dialect(
    "gemini", (router,), prefixes=("/v1beta/",), owns_path=lambda p: p.endswith(":generateContent"),
    error_shape=error_shape, tag="Gemini", doc_order=50, claim_order=0,
    tag_description="The Gemini API's generateContent for the image models (google-genai).",
    key_headers=("x-goog-api-key",), request_headers=("x-goog-api-client",),
    field_policies=(FieldPolicy("Gemini", "POST /v1beta/models/<model>:generateContent", FIELD_POLICY,
                                source="https://ai.google.dev/api/generate-content"),),
    compare_client=GeminiClient)
