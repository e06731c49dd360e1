"""OpenAI's image streaming (`stream: true`): Server-Sent Events with partial images, then the finished images.

Events as OpenAI's streaming reference names them: `image_generation.partial_image` / `image_edit.partial_image`
(`partial_image_index` 0..partial_images-1), one `image_generation.completed` / `image_edit.completed` per image,
and `{"type": "error", ...}` when the job fails (the SDK raises it). Partial images are the job's live previews
(pipelines/previews.py), re-encoded in the requested output format; they are spread over the denoising steps, and
a render quicker than its previews sends fewer, as OpenAI's reference allows.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from PIL import Image

from server.api.dialect_io import ctx_of, failure, file_b64, watch
from server.jobs.store import FINAL_STATES, JobRecord, JobStatus

if TYPE_CHECKING:
    from server.api.openai_api import GenerationsBody

POLL_S = 0.1
KEEPALIVE_S = 15.0
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _reencoded(jpeg: bytes, fmt: str) -> tuple[str, str]:
    """A preview in the format the client asked for: (base64, "WxH")."""
    with Image.open(io.BytesIO(jpeg)) as im:
        im.load()
        out = io.BytesIO()
        im.save(out, _PIL_FORMAT[fmt])
        return base64.b64encode(out.getvalue()).decode(), f"{im.width}x{im.height}"


def _usage() -> dict[str, Any]:
    return {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
            "total_tokens": 0}


def image_event_stream(request: Request, job_id: str, body: GenerationsBody, prefix: str) -> StreamingResponse:
    """The stream for submitted job `job_id` (`prefix`: image_generation or image_edit)."""
    ctx = ctx_of(request)
    wanted = body.partial_images or 0
    common = {"background": "opaque", "output_format": body.output_format, "quality": body.quality}

    async def stream() -> AsyncIterator[str]:
        sent = 0
        shown = 0  # the step of the last preview sent: each partial image is a newer one
        idle = 0.0
        async for record in watch(request, job_id, POLL_S):
            idle += POLL_S
            if record is not None and record.status in FINAL_STATES:
                for chunk in await asyncio.to_thread(_finished, record):
                    yield chunk
                return
            if record is not None and sent < wanted and record.preview_step > shown and _due(record, sent, wanted):
                jpeg = await asyncio.to_thread(ctx.engine.previews.get, job_id)
                if jpeg:
                    b64, size = await asyncio.to_thread(_reencoded, jpeg, body.output_format)
                    yield _event(f"{prefix}.partial_image", {
                        "type": f"{prefix}.partial_image", "b64_json": b64, "created_at": int(time.time()),
                        "partial_image_index": sent, "size": size, **common})
                    sent += 1
                    shown = record.preview_step
                    idle = 0.0
            if idle >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                idle = 0.0

    def _finished(record: JobRecord) -> list[str]:
        if record.status is not JobStatus.COMPLETED:
            err = failure(record)
            return [_event("error", {"type": "error", "error": {
                "type": "invalid_request_error" if err.status < 500 else "server_error", "code": str(err.code),
                "message": err.message, "param": err.field}})]
        images = (record.result or {}).get("images", [])
        return [_event(f"{prefix}.completed", {
            "type": f"{prefix}.completed", "b64_json": file_b64(ctx, im["file"]), "created_at": int(time.time()),
            "size": f"{im['width']}x{im['height']}", "usage": _usage(), **common}) for im in images]

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                      "X-Darkroom-Task-Id": job_id})


def _due(record: JobRecord, sent: int, wanted: int) -> bool:
    """Whether the job's latest preview is far enough along for partial image number `sent` (of `wanted`, spread
    evenly over the steps so the last partial is not the first)."""
    if record.status is not JobStatus.PROCESSING or not record.preview_step or not record.progress_total:
        return False
    return record.preview_step >= record.progress_total * sent / (wanted + 1)
