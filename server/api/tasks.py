"""Tasks of every kind: status, progress as Server-Sent Events, and cancel."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server.api.auth import caller
from server.api.dialect_io import record_or_404, watch
from server.api.links import Links
from server.context import AppContext
from server.errors import ApiError, ErrorCode
from server.jobs.store import FINAL_STATES, JobRecord, JobStatus
from server.jobs.view import JobView
from server.retention import files_expire_at

router = APIRouter()

EVENT_POLL_S = 0.1
KEEPALIVE_S = 15.0


def _file(entry: dict[str, Any], links: Links, record: JobRecord) -> dict[str, Any]:
    return {"url": links.file(entry["file"], record), "width": entry["width"], "height": entry["height"],
            "content_type": entry["content_type"]}


def task_view(record: JobRecord, links: Links) -> dict[str, Any]:
    """The task object of GET /api/v1/tasks/{id} (and the sync image answer's superset), its file URLs written by
    `links` (signed until the files expire)."""
    job = JobView.of(record)
    p = job.params
    width, height = job.output_size
    view: dict[str, Any] = {
        "task_id": record.id,
        "status": str(record.status),
        "model": record.model,
        "prompt": p.prompt,
        "seed": p.seeds[0],
        "seeds": list(p.seeds),
        "width": width,
        "height": height,
        "warnings": job.warnings,
        "progress": {"step": record.progress_step, "total": record.progress_total},
        "preview": _preview_view(record, links.base),
        "created_at": record.created_at,
        "started_at": record.started_at,
        "completed_at": record.finished_at,
        "error": record.error,
        "queue_position": None,  # filled in for pending tasks by the status route
        # Admission's estimate and, once it ran, the batch it ran in (shared_call: one pipeline call).
        "darkroom": {"estimate": record.estimate, "batch": record.batch, "priority": record.priority,
                     "webhook": _webhook_view(record.webhook), "asked": job.request.asked,
                     "task": str(p.task), "inputs": [] if record.files_expired else _inputs_view(job, links.base),
                     "files_expire_at": files_expire_at(record, links.retention_s),
                     "files_expired": record.files_expired},
    }
    result = record.result
    if record.status is not JobStatus.COMPLETED or result is None:
        return view
    if "videos" in result:
        view["videos"] = [{**_file(v, links, record), "num_frames": v["num_frames"], "fps": v["fps"],
                           "duration": v["duration"], "has_audio": v["has_audio"], "seed": v["seed"],
                           "poster": _file(v["poster"], links, record)} for v in result["videos"]]
        view["usage"] = {"videos_generated": len(view["videos"]),
                         "seconds_generated": round(sum(v["duration"] for v in view["videos"]), 3),
                         "cost_usd": 0.0, "compute_seconds": result["timings"]["pipeline_s"]}
    else:
        view["images"] = [{**_file(im, links, record), "seed": im["seed"]} for im in result["images"]]
        view["usage"] = {"images_generated": len(view["images"]), "cost_usd": 0.0, "cost_credits": 0,
                         "compute_seconds": result["timings"]["pipeline_s"]}
    view["darkroom"] |= {"timings": result["timings"], "runtime": result["runtime"], "task": str(p.task),
                         "num_inference_steps": p.num_inference_steps, "guidance_scale": p.guidance_scale,
                         "strength": p.strength, "negative_prompt": p.negative_prompt,
                         "rendered": {"width": p.width, "height": p.height}}
    return view


def _preview_view(record: JobRecord, base: str) -> dict[str, Any] | None:
    """Where the running task's latest live preview is (when it asked for previews and one was made)."""
    if record.status is not JobStatus.PROCESSING or not record.preview_step:
        return None
    return {"step": record.preview_step, "url": f"{base}/api/v1/tasks/{record.id}/preview"}


def preview_data_url(ctx: AppContext, record: JobRecord) -> str | None:
    """The task's latest preview as a data URL (what streams carry), None when there is none."""
    if not record.preview_step or record.status is not JobStatus.PROCESSING:
        return None
    data = ctx.engine.previews.get(record.id)
    return f"data:image/jpeg;base64,{base64.b64encode(data).decode()}" if data else None


def _inputs_view(job: JobView, base: str) -> list[dict[str, str]]:
    """The task's stored inputs, with their URLs (a client re-runs or shows a task from them)."""
    return [{"role": role, "url": f"{base}/api/v1/tasks/{job.record.id}/inputs/{ref.rsplit('/', 1)[-1]}"}
            for role, ref in job.inputs()]


def _webhook_view(hook: dict[str, Any] | None) -> dict[str, Any] | None:
    """A job's webhook as clients see it: never the signing secret."""
    if not hook:
        return None
    return {"url": hook["url"], "events": hook["events"], "delivered": hook["delivered"],
            "attempts": hook["attempts"]}


def _ctx(request: Request) -> AppContext:
    return request.app.state.ctx


async def _record_or_404(request: Request, task_id: str) -> JobRecord:
    return await record_or_404(request, task_id, "task_id")


def _cursor(record: JobRecord) -> str:
    return base64.urlsafe_b64encode(f"{record.created_at!r}|{record.id}".encode()).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, _, job_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
        return float(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, ErrorCode.INVALID_REQUEST, "cursor is not one this server handed out; start again "
                       "without it", "cursor") from None


@router.get("/api/v1/tasks")
async def list_tasks(request: Request, limit: int = Query(20, ge=1, le=100), cursor: str | None = None,
                     model: str | None = Query(None, max_length=200),
                     status: JobStatus | None = None) -> JSONResponse:
    """The caller's tasks, newest first: `limit` per page, `next_cursor` for the next page (null at the end),
    optionally only one model's or one status's. With API keys, each key sees its own tasks."""
    ctx = _ctx(request)
    before = _parse_cursor(cursor) if cursor else None
    records = await ctx.service.list(caller(request.scope), limit + 1, before, model, status)
    links = ctx.links(str(request.base_url))
    page = records[:limit]
    return JSONResponse({"tasks": [task_view(r, links) for r in page],
                         "next_cursor": _cursor(page[-1]) if len(records) > limit else None})


@router.delete("/api/v1/tasks/{task_id}")
async def delete_task(task_id: str, request: Request) -> JSONResponse:
    """Delete a finished task with its output and input files (their URLs then answer 404); a pending or running
    task must be cancelled first (409)."""
    ctx = _ctx(request)
    record = await _record_or_404(request, task_id)
    if record.status not in FINAL_STATES or not await ctx.service.delete(task_id):
        raise ApiError(409, ErrorCode.NOT_FINISHED, f"the task is {record.status}; cancel it first, then delete it",
                       "task_id")
    return JSONResponse({"task_id": task_id, "deleted": True})


@router.get("/api/v1/tasks/{task_id}/inputs/{name}", openapi_extra={"responses": {"200": {"content": {
    "image/png": {"schema": {"type": "string", "format": "binary"}}}}}})
async def task_input(task_id: str, name: str, request: Request) -> Response:
    """One of the task's stored inputs (normalised PNG), as listed in its `darkroom.inputs`."""
    record = await _record_or_404(request, task_id)
    if record.files_expired:
        raise ApiError(410, ErrorCode.EXPIRED, "the task's files have expired (they are kept for "
                       f"{_ctx(request).settings.files.retention_hours:g} h)", "task_id")
    data = await _ctx(request).service.input_bytes(record, name)
    if data is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"the task has no input {name[:60]!r}", "name")
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/api/v1/tasks/{task_id}/preview", openapi_extra={"responses": {"200": {"content": {
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}})
async def task_preview(task_id: str, request: Request) -> Response:
    """The running task's latest live preview (a small JPEG; the task must have asked with `previews: true`); 404
    before the first one and once the task has finished (its result replaces it). `X-Darkroom-Preview-Step` says
    which denoising step it shows."""
    ctx = _ctx(request)
    record = await _record_or_404(request, task_id)
    data = ctx.engine.previews.get(record.id) if record.preview_step and record.status is JobStatus.PROCESSING \
        else None
    if data is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, "the task has no live preview now (ask with previews=true; "
                       "previews exist only while it runs)", "task_id")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store",
                                                           "X-Darkroom-Preview-Step": str(record.preview_step)})


@router.get("/api/v1/tasks/{task_id}")
async def get_task(task_id: str, request: Request) -> JSONResponse:
    """Status of a task; completed tasks carry images or videos and usage, failed ones the error."""
    ctx = _ctx(request)
    view = task_view(await _record_or_404(request, task_id), ctx.links(str(request.base_url)))
    if view["status"] == JobStatus.PENDING:
        view["queue_position"] = await ctx.service.queue_position(task_id)
    return JSONResponse(view)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get("/api/v1/tasks/{task_id}/events")
async def task_events(task_id: str, request: Request) -> StreamingResponse:
    """Server-Sent Events: `status` first, `progress` on every recorded step (with `preview`, a JPEG data URL of
    the forming image, when the task asked for previews and a new one is ready), then one final event named
    `completed`, `failed` or `cancelled` carrying the whole task, after which the stream ends."""
    ctx = _ctx(request)
    await _record_or_404(request, task_id)
    links = ctx.links(str(request.base_url))

    async def stream() -> AsyncIterator[str]:
        last: tuple[str, int, int, int] | None = None
        idle = 0.0
        async for record in watch(request, task_id, EVENT_POLL_S):
            idle += EVENT_POLL_S
            if record is None:
                continue
            if record.status in FINAL_STATES:
                yield _sse(str(record.status), task_view(record, links))
                return
            state = (str(record.status), record.progress_step, record.progress_total, record.preview_step)
            if state != last:
                event = "status" if last is None else "progress"
                data: dict[str, Any] = {"task_id": task_id, "status": state[0], "step": state[1], "total": state[2]}
                if last is None or state[3] != last[3]:
                    preview = await asyncio.to_thread(preview_data_url, ctx, record)
                    if preview:
                        data["preview"] = {"step": record.preview_step, "image": preview}
                yield _sse(event, data)
                last, idle = state, 0.0
            elif idle >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                idle = 0.0

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/api/v1/tasks/{task_id}/cancel")
async def cancel_task(task_id: str, request: Request) -> JSONResponse:
    """Cancel: a pending task ends `cancelled` at once (200); a running one stops at its next denoising
    step (202, poll or stream for `cancelled`); a finished one cannot be cancelled (409)."""
    ctx = _ctx(request)
    await _record_or_404(request, task_id)
    if not await ctx.service.cancel(task_id):
        record = await _record_or_404(request, task_id)
        raise ApiError(409, ErrorCode.ALREADY_FINISHED, f"the task is already {record.status}", "task_id")
    record = await _record_or_404(request, task_id)
    view = task_view(record, ctx.links(str(request.base_url)))
    view["cancel_requested"] = True
    return JSONResponse(view, status_code=200 if record.status is JobStatus.CANCELLED else 202)
