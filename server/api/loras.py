"""The LoRA library's routes: upload an adapter (multipart), list what a key may use, get one, delete one.

Uploads are scoped to the key that made them (another key gets 404, as for uploads and history); the server's
mounted folder is listed to every key and cannot be deleted through the API."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from pipelines.lora_format import LoraFormatError, refuse_pickle_name
from server.api.auth import caller
from server.api.dialect_io import ctx_of
from server.api.request_body import content_kind, read_multipart
from server.errors import ApiError, ErrorCode
from server.loras import LoraRecord

router = APIRouter()

_UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "A LoRA in .safetensors"},
        "name": {"type": "string", "description": "A name to show (default: the file name)"}}}}}}}


def format_error(exc: LoraFormatError, field: str) -> ApiError:
    """A LoRA file problem as the client's 422."""
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE if exc.code == "unsupported_format" else ErrorCode.INVALID_LORA
    return ApiError(422, code, exc.message, field)


@router.post("/api/v1/loras", status_code=201, openapi_extra=_UPLOAD_SCHEMA)
async def upload_lora(request: Request) -> JSONResponse:
    """Upload a LoRA (.safetensors, multipart part `file`): checked from its header (pickles refused, the family it
    was trained for found from its layers) and kept for this key."""
    ctx = ctx_of(request)
    if content_kind(request) != "multipart":
        raise ApiError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, "upload the adapter as multipart/form-data in a part "
                       "named file", None)
    cap = int(ctx.settings.files.max_lora_mb * 1e6)
    fields, files = await read_multipart(request, {"file": "file"}, max_files=1, file_limit=cap)
    if not files.get("file"):
        raise ApiError(422, ErrorCode.MISSING_FIELD, "send the adapter in a multipart part named file", "file")
    upload = files["file"][0]
    filename = upload.filename or "adapter.safetensors"
    try:
        refuse_pickle_name(filename)
        record = await asyncio.to_thread(ctx.loras.add, upload.data, str(fields.get("name") or
                                         filename.rsplit(".", 1)[0]), caller(request.scope))
    except LoraFormatError as exc:
        raise format_error(exc, "file") from None
    except OverflowError as exc:
        raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, str(exc), "file") from None
    return JSONResponse(_view(record), status_code=201)


@router.get("/api/v1/loras")
async def list_loras(request: Request) -> JSONResponse:
    """The adapters this key may use: its uploads (newest first), then the server's folder."""
    ctx = ctx_of(request)
    records = await asyncio.to_thread(ctx.loras.list, caller(request.scope))
    return JSONResponse({"data": [_view(r) for r in records]})


@router.get("/api/v1/loras/{lora_id}")
async def get_lora(lora_id: str, request: Request) -> JSONResponse:
    """One adapter (404 when this key may not use it)."""
    return JSONResponse(_view(await _record_or_404(request, lora_id)))


@router.delete("/api/v1/loras/{lora_id}", status_code=204)
async def delete_lora(lora_id: str, request: Request) -> Response:
    """Delete one of this key's uploads (the server's folder is read-only: 409 for those)."""
    ctx = ctx_of(request)
    record = await _record_or_404(request, lora_id)
    if record.source != "upload":
        raise ApiError(409, ErrorCode.INVALID_REQUEST, "adapters in the server's LoRA folder are read-only; the "
                       "operator removes them from DARKROOM_LORA_DIR", "id")
    await asyncio.to_thread(ctx.loras.delete, lora_id, caller(request.scope))
    return Response(status_code=204)


async def _record_or_404(request: Request, lora_id: str) -> LoraRecord:
    ctx = ctx_of(request)
    try:
        record = await asyncio.to_thread(ctx.loras.get, lora_id, caller(request.scope))
    except ValueError as exc:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, str(exc), "id") from None
    if record is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no LoRA {lora_id!r} for this key", "id")
    return record


def _view(record: LoraRecord) -> dict[str, object]:
    return {"object": "lora", **record.public()}
