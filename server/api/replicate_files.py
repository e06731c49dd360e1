"""Replicate's files API: POST /v1/files (multipart `content`), GET /v1/files, GET/DELETE /v1/files/{id} and
GET /v1/files/{id}/download. The replicate client uploads every local file it is given as an input this way and
sends the file's `urls.get` in the prediction; `own_file_bytes` lets the prediction routes read such a URL
straight from the store instead of fetching it over the network (which the SSRF rules would refuse anyway).
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from server.api.auth import caller
from server.api.dialect_io import base_url, ctx_of
from server.api.request_body import content_kind, read_multipart
from server.errors import ApiError, ErrorCode
from server.media.uploads import UploadedFile

router = APIRouter()

_OWN_FILE = re.compile(r"^/v1/files/([a-z0-9]{26})(?:/download)?$")


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


def file_object(f: UploadedFile, base: str) -> dict[str, Any]:
    """Replicate's File object."""
    return {"id": f.id, "name": f.name, "content_type": f.content_type, "size": f.size, "etag": f.md5,
            "checksums": {"sha256": f.sha256, "md5": f.md5}, "metadata": f.metadata,
            "created_at": _iso(f.created_at), "expires_at": _iso(f.expires_at),
            "urls": {"get": f"{base}/v1/files/{f.id}"}}


def own_file_bytes(request: Request, url: str) -> bytes | None:
    """The bytes behind `url` when it is one of this server's file URLs (as handed out to this caller); None
    when the URL points anywhere else. A URL of ours whose file is gone is a 422 naming it."""
    parts = urlsplit(url)
    match = _OWN_FILE.match(parts.path)
    if match is None:
        return None
    ctx = ctx_of(request)
    ours = {urlsplit(str(request.base_url)).netloc}
    if ctx.settings.server.public_base_url:
        ours.add(urlsplit(ctx.settings.server.public_base_url).netloc)
    if parts.netloc not in ours:
        return None
    data = ctx.uploads.read(match.group(1), caller(request.scope))
    if data is None:
        raise ApiError(422, ErrorCode.FETCH_FAILED, f"uploaded file {match.group(1)} does not exist or has expired; "
                       "upload it again", None)
    return data


@router.post("/v1/files", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["content"], "properties": {
        "content": {"type": "string", "format": "binary"}, "metadata": {"type": "string"}}}}}}})
async def create_file(request: Request) -> JSONResponse:
    """Upload one file (part `content`; optional `metadata`, a JSON object as a text part or, as the replicate JS
    SDK sends it, as a file part)."""
    ctx = ctx_of(request)
    if content_kind(request) != "multipart":
        raise ApiError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, "upload the file as multipart/form-data in a part "
                       "named content", None)
    fields, files = await read_multipart(request, {"content": "content"}, max_files=1,
                                         text_parts=frozenset({"metadata"}))
    if not files.get("content"):
        raise ApiError(422, ErrorCode.MISSING_FIELD, "send the file in a multipart part named content", "content")
    upload = files["content"][0]
    metadata: Any = {}
    if fields.get("metadata"):
        try:
            metadata = json.loads(fields["metadata"])
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            raise ApiError(422, ErrorCode.INVALID_REQUEST, "metadata must be a JSON object", "metadata")
    record = await asyncio.to_thread(ctx.uploads.create, upload.data, upload.filename or "file",
                                     upload.content_type or "application/octet-stream", caller(request.scope),
                                     metadata)
    return JSONResponse(file_object(record, base_url(request)), status_code=201)


@router.get("/v1/files")
async def list_files(request: Request) -> JSONResponse:
    """The caller's files, newest first."""
    ctx = ctx_of(request)
    base = base_url(request)
    files = [file_object(f, base) for f in await asyncio.to_thread(ctx.uploads.list, caller(request.scope))]
    return JSONResponse({"results": files, "next": None, "previous": None})


async def _file_or_404(request: Request, file_id: str) -> UploadedFile:
    record = await asyncio.to_thread(ctx_of(request).uploads.get, file_id, caller(request.scope))
    if record is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no file with id {file_id[:100]!r}", "file_id")
    return record


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, request: Request) -> JSONResponse:
    """The File object."""
    return JSONResponse(file_object(await _file_or_404(request, file_id), base_url(request)))


@router.get("/v1/files/{file_id}/download", openapi_extra={"responses": {"200": {"content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}})
async def download_file(file_id: str, request: Request) -> Response:
    """The file's bytes."""
    record = await _file_or_404(request, file_id)
    data = await asyncio.to_thread(ctx_of(request).uploads.read, file_id, caller(request.scope))
    if data is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no file with id {file_id[:100]!r}", "file_id")
    return Response(data, media_type=record.content_type,
                    headers={"Content-Disposition": f'attachment; filename="{record.id}"'})


@router.delete("/v1/files/{file_id}", status_code=204)
async def delete_file(file_id: str, request: Request) -> Response:
    """Delete the file: 204, or 404 when there is none."""
    if not await asyncio.to_thread(ctx_of(request).uploads.delete, file_id, caller(request.scope)):
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no file with id {file_id[:100]!r}", "file_id")
    return Response(status_code=204)
