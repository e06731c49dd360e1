"""Serves generated outputs by their random names, and nothing else."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from server.errors import ApiError, ErrorCode

router = APIRouter()


@router.get("/files/{name}")
async def get_file(name: str, request: Request) -> FileResponse:
    """One output image. Unknown, malformed or non-generated names are 404 alike."""
    outputs = request.app.state.ctx.outputs
    found = outputs.open_path(name)
    if found is None:
        if outputs.expired(name):
            raise ApiError(410, ErrorCode.EXPIRED, "this file has expired (outputs are kept for "
                           f"{request.app.state.ctx.settings.retention_hours:g} h); run the task again", None)
        raise ApiError(404, ErrorCode.NOT_FOUND, "no such file", None)
    path, content_type = found
    return FileResponse(path, media_type=content_type, headers={"Cache-Control": "private, max-age=86400"})
