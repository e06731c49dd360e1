"""What the provider dialects share: reading a finished job's outputs, waiting for jobs, mapping states.

Dialects translate wire formats only; everything here is plain job records and files.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import Request, Response
from pydantic import BaseModel, ValidationError

from server.api.auth import caller
from server.api.errors import from_validation_errors
from server.api.links import Links
from server.api.request_body import read_json_object
from server.context import AppContext
from server.engine.snapshot import EngineSnapshot
from server.errors import ApiError, ErrorCode
from server.faults import StoreBusy
from server.jobs.store import JobRecord, JobStatus

BaseModelT = TypeVar("BaseModelT", bound=BaseModel)


def ctx_of(request: Request) -> AppContext:
    """The app context."""
    return request.app.state.ctx


def base_url(request: Request) -> str:
    """Base of URLs handed back (public base URL or what the client called)."""
    return ctx_of(request).public_base(str(request.base_url))


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 invalid_request otherwise (json_too_deep past the nesting limit)."""
    return await read_json_object(request)


def validated(model: type[BaseModelT], fields: dict[str, Any], prefix: str = "") -> BaseModelT:
    """`fields` validated by `model`; the first problem as a 4xx naming the field (under `prefix`)."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        err = from_validation_errors(exc.errors(), list(model.model_fields))
        if not prefix:
            raise err from None
        raise ApiError(err.status, err.code, err.message, f"{prefix}.{err.field}" if err.field else prefix) from None


async def engine_snapshot(ctx: AppContext) -> EngineSnapshot:
    """The engine's workers as they are now, without the queue; taken off the event loop (workers may be remote)."""
    return await asyncio.to_thread(ctx.engine.snapshot, False)


def acceleration_view(ctx: AppContext, snap: EngineSnapshot, model_id: str, weights: str) -> dict[str, Any]:
    """An id's acceleration: what configs/acceleration.toml asks for, and what a worker that has the weights
    loaded actually runs (null until one has; the job records carry it too)."""
    return {"profile": ctx.acceleration.describe(model_id),
            "active": snap.active_acceleration(weights)}


async def record_or_404(request: Request, job_id: str, field: str = "id") -> JobRecord:
    """The job, or 404 not_found for an unknown id and for another key's job (tasks are visible only to the key
    that created them)."""
    record = await ctx_of(request).service.get(job_id, caller(request.scope)) if len(job_id) <= 100 else None
    if record is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no task with id {job_id[:100]!r}", field)
    return record


def outputs(record: JobRecord, links: Links) -> list[dict[str, Any]]:
    """A completed job's files (images, or videos) with their URLs (signed until they expire), sizes and seeds."""
    result = record.result or {}
    return [{**entry, "url": links.file(entry["file"], record)}
            for entry in result.get("images", []) + result.get("videos", [])]


def file_b64(ctx: AppContext, name: str) -> str:
    """A stored output as base64 (the name is one the output store generated)."""
    return _b64_bytes(ctx, name).decode()


def _b64_bytes(ctx: AppContext, name: str) -> bytes:
    data = ctx.outputs.read(name)
    if data is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, "the output file is gone")
    return base64.b64encode(data)


class InlineImages:
    """Builds a JSON response whose image fields are inline base64, without json.dumps scanning megabytes of
    base64 for characters to escape (it has none): placeholders are dumped, then swapped for the bytes."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.nonce = secrets.token_hex(8)
        self.blobs: dict[bytes, bytes] = {}

    def ref(self, name: str) -> str:
        """A placeholder for output `name`'s base64, to put where the string belongs."""
        marker = f"@@b64-{self.nonce}-{len(self.blobs)}@@"
        self.blobs[f'"{marker}"'.encode()] = b'"' + _b64_bytes(self.ctx, name) + b'"'
        return marker

    def response(self, payload: dict[str, Any], status_code: int = 200) -> Response:
        """The JSON response with every placeholder replaced."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        for marker, blob in self.blobs.items():
            body = body.replace(marker, blob, 1)
        return Response(body, status_code=status_code, media_type="application/json")


def file_size(ctx: AppContext, name: str) -> int:
    """Bytes of a stored output."""
    return ctx.outputs.size(name) or 0


def failure(record: JobRecord) -> ApiError:
    """A failed or cancelled job as the ApiError a synchronous dialect answers with."""
    err = record.error or {}
    if record.status is JobStatus.CANCELLED:
        return ApiError(409, ErrorCode.ALREADY_FINISHED, "the task was cancelled while this request waited", None)
    status = 422 if err.get("code") in ("invalid_request", "insufficient_vram") else \
        504 if err.get("code") == "start_timeout" else 500
    code = ErrorCode(err["code"]) if err.get("code") in ErrorCode._value2member_map_ else ErrorCode.GENERATION_FAILED
    return ApiError(status, code, err.get("message", "the job failed"), err.get("field"))


async def watch(request: Request, job_id: str, poll_s: float = 0.1) -> AsyncIterator[JobRecord | None]:
    """The job's record every `poll_s` while the client stays connected (None while the store is busy: the stream
    stays open and looks again); what every event stream reads, each stopping at a final state."""
    ctx = ctx_of(request)
    while True:
        try:
            record = await ctx.service.get(job_id, caller(request.scope))
        except StoreBusy:
            record = None
        yield record
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll_s)


async def wait_done(request: Request, job_id: str, timeout: float | None = None) -> JobRecord:
    """Wait for the job (up to the sync timeout); 504 when it is still running then."""
    ctx = ctx_of(request)
    record = await ctx.service.wait(job_id, ctx.settings.server.sync_timeout_s if timeout is None else timeout)
    if record.status is JobStatus.COMPLETED:
        return record
    if record.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise failure(record)
    raise ApiError(504, ErrorCode.GENERATION_FAILED, f"the job is still running after the synchronous wait; "
                   f"poll /api/v1/tasks/{job_id} for it")
