"""Serves generated outputs by their random names, and nothing else: from a file on this machine (zero-copy,
ranges by Starlette) or streamed from the shared bucket (ranges passed through, so videos seek)."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from server.api.auth import file_verdict
from server.errors import ApiError, ErrorCode
from server.media.signing import Verdict
from server.media.storage import OutputStore

router = APIRouter()

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CACHE = {"Cache-Control": "private, max-age=86400"}


def file_response(outputs: OutputStore, name: str, request: Request) -> Response | None:
    """The output as a response (a Range header honoured); None when there is no such output."""
    content_type = outputs.content_type(name)
    if content_type is None:
        return None
    path = outputs.local_path(name)
    if path is not None:
        return FileResponse(path, media_type=content_type, headers=_CACHE)
    wanted = _RANGE.match(request.headers.get("range", "").strip())
    byte_range = (int(wanted[1]), int(wanted[2]) if wanted[2] else None) if wanted else None
    stream = outputs.stream(name, byte_range)
    if stream is None:
        size = outputs.size(name) if byte_range else None
        if size is None:
            return None
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    headers = {**_CACHE, "Accept-Ranges": "bytes", "Content-Length": str(stream.length)}
    status = 200
    if byte_range is not None and stream.content_range:
        headers["Content-Range"] = stream.content_range
        status = 206
    # A plain iterator: Starlette reads it in a worker thread, so a slow bucket never blocks the event loop.
    return StreamingResponse(stream.chunks, status_code=status, media_type=content_type, headers=headers)


@router.get("/files/{name}")
async def get_file(name: str, request: Request) -> Response:
    """One output image or clip: by its signed URL (`exp`, `sig`: no key needed) or with an API key. Unknown,
    malformed or non-generated names are 404 alike; expired ones (or a signed URL past its expiry) 410."""
    ctx = request.app.state.ctx
    outputs = ctx.outputs
    signed_but_expired = ctx.signer is not None and file_verdict(ctx.signer, request.scope) is Verdict.EXPIRED
    response = None if signed_but_expired else await asyncio.to_thread(file_response, outputs, name, request)
    if response is None:
        if signed_but_expired or outputs.expired(name):
            raise ApiError(410, ErrorCode.EXPIRED, "this file has expired (outputs are kept for "
                           f"{request.app.state.ctx.settings.files.retention_hours:g} h); run the task again", None)
        raise ApiError(404, ErrorCode.NOT_FOUND, "no such file", None)
    return response
