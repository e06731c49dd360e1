"""OpenAI's Videos API (Sora): create, retrieve, list, delete, download, remix and extend.

OpenAI retired its hosted Sora 2 Videos API on 2026-09-24; teams built on it point the `openai` SDK here and keep
their code. Shapes follow the SDK's `Video` object and routes (`openai.resources.videos`): sizes are any even WxH
the model's tiers cover, `seconds` the model's durations (4, 6, 8 and 12 for the Sora ids).

Remix re-renders a finished video with a new prompt from the same first frame, seed, size and length on the same
model (`remixed_from_video_id` set): the image-to-video stand-ins take a first frame, not a clip, so the remix
keeps the original's start and its noise, not every frame. An extension continues a finished clip from its last
frame for `seconds` more and stores the two stitched (its `seconds` is the stitched total, as OpenAI's is).
"""

from __future__ import annotations

import asyncio
import io
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from server.api.auth import caller
from server.api.dialect_io import ctx_of, json_object, record_or_404, validated
from server.api.files import file_response
from server.api.openapi_doc import json_body
from server.api.request_body import read_json_or_multipart
from server.asks import ImageInput, VideoAsk
from server.errors import ApiError, ErrorCode
from server.jobs.store import FINAL_STATES, JobRecord, JobStatus
from server.jobs.view import JobView
from server.media.storage import OutputStore
from server.media.video import decode_frames

router = APIRouter()

SOURCE = "https://platform.openai.com/docs/api-reference/videos (and the openai SDK's `resources/videos.py`)"

FIELD_POLICY = {
    "prompt": "mapped: prompt",
    "model": "mapped: configs/dialects.toml [openai.videos]",
    "input_reference": "mapped: first frame (required: the stand-ins are image-to-video)",
    "seconds": "mapped: duration (4, 8 and 12 as OpenAI lists, and 6)",
    "size": "mapped: exact clip size (any even WxH the tiers cover; rendered on the grid, then cropped)",
}
ROUTE_POLICY = {
    "GET /v1/videos": "mapped: the caller's videos, newest first (`order=asc` oldest first), `after`/`limit` cursor",
    "DELETE /v1/videos/{id}": "mapped: deletes a finished video and its files (409 while it runs)",
    "POST /v1/videos/{id}/remix": "mapped: a new prompt over a finished video, from its first frame, seed, size and "
                                  "length (not a frame-by-frame video-to-video pass)",
    "POST /v1/videos/extensions": "mapped: continues a finished video (`video={id}`, JSON or `video[id]`) or an "
                                  "uploaded MP4 (`video` file part; `model`, a darkroom extension, picks the id, "
                                  "sora-2 by default) from its last frame; the result is the two stitched",
    "POST /v1/videos/edits": "refused (unsupported_feature): no video-to-video editing model is served",
    "characters": "refused (404): no character API",
}

_STATUS = {JobStatus.PENDING: "queued", JobStatus.PROCESSING: "in_progress", JobStatus.COMPLETED: "completed",
           JobStatus.FAILED: "failed", JobStatus.CANCELLED: "failed"}
_LIST_SCAN = 1000
"""At most this many tasks are looked through for one page of videos (tasks of every kind share the listing)."""


class VideoBody(BaseModel):
    """POST /v1/videos (JSON; multipart carries input_reference as a file)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=32000)
    model: str = "sora-2"
    seconds: str = Field("4", max_length=4)
    size: str = Field("720x1280", max_length=12)
    input_reference: dict[str, str] | None = None


class RemixBody(BaseModel):
    """POST /v1/videos/{id}/remix."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=32000)


class UploadExtendBody(BaseModel):
    """POST /v1/videos/extensions with the clip itself as the `video` file part (what the SDK sends)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=32000)
    seconds: str = Field(max_length=4)
    model: str = Field("sora-2", description="darkroom extension: which video id continues an uploaded clip.")


class ExtendBody(BaseModel):
    """POST /v1/videos/extensions (multipart: `video[id]`, or JSON `video: {id}`)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=32000)
    seconds: str = Field(max_length=4)
    video: dict[str, str]


def video_object(record: JobRecord) -> dict[str, Any]:
    """The OpenAI Video object for a job."""
    job = JobView.of(record)
    width, height = job.output_size
    total = max(1, record.progress_total)
    progress = 100 if record.status is JobStatus.COMPLETED else int(100 * record.progress_step / total)
    error = None
    if record.status in (JobStatus.FAILED, JobStatus.CANCELLED) and record.error:
        error = {"code": record.error.get("code"), "message": record.error.get("message")}
    seconds = job.seconds
    clips = (record.result or {}).get("videos") if record.status is JobStatus.COMPLETED else None
    if clips:
        seconds = round(clips[0]["duration"])  # an extension's is the stitched total
    note = record.dialect or {}
    return {
        "id": record.id, "object": "video", "status": _STATUS[record.status], "progress": progress,
        "created_at": int(record.created_at),
        "completed_at": int(record.finished_at) if record.finished_at and record.status is JobStatus.COMPLETED
        else None,
        "expires_at": None, "model": record.model, "seconds": str(seconds), "size": f"{width}x{height}",
        "prompt": job.params.prompt, "remixed_from_video_id": note.get("remixed_from_video_id"), "error": error,
    }


def _parse_size(size: str) -> tuple[int, int]:
    w, _, h = size.partition("x")
    if not (w.isdigit() and h.isdigit()):
        raise ApiError(422, ErrorCode.UNSUPPORTED_RESOLUTION, "size must be WIDTHxHEIGHT, e.g. 1280x720", "size")
    return int(w), int(h)


def _seconds(value: str) -> int:
    if not value.isdigit():
        raise ApiError(422, ErrorCode.UNSUPPORTED_DURATION, "seconds must be a whole number like \"4\"", "seconds")
    return int(value)


@router.post("/v1/videos", openapi_extra=json_body(VideoBody, multipart=True, creates_task=True))
async def create_video(request: Request) -> JSONResponse:
    """Image-to-video, asynchronous: returns a Video object to poll."""
    ctx = ctx_of(request)
    frame: ImageInput | None = None
    fields, files = await read_json_or_multipart(request, {"input_reference": "input_reference"}, 1,
                                                 "the first frame in input_reference")
    body = validated(VideoBody, fields)
    if files:
        frame = ImageInput(field="input_reference", data=files["input_reference"][0].data)
    elif body.input_reference:
        if "image_url" not in body.input_reference:
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "only input_reference.image_url is supported "
                           "(no Files API here)", "input_reference")
        frame = ImageInput(field="input_reference", url=body.input_reference["image_url"])
    if frame is None:
        raise ApiError(422, ErrorCode.MISSING_FIELD, "input_reference is required: the local video models animate "
                       "a first frame (image-to-video)", "input_reference")
    model = ctx.names.resolve("openai.videos", body.model)
    ask = VideoAsk(model=model, prompt=body.prompt, frames=(frame,), duration=_seconds(body.seconds),
                   size=_parse_size(body.size), size_field="size")
    job_id, _ = await ctx.service.submit_video(ask, caller=caller(request.scope))
    return JSONResponse(video_object(await record_or_404(request, job_id)))


async def _finished_video(request: Request, video_id: str, field: str) -> JobRecord:
    """A completed video of the caller's (404 for another's or a non-video, 409 while it is not done)."""
    record = await record_or_404(request, video_id, field)
    if record.model not in ctx_of(request).catalog.video_ids():
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no video with id {video_id[:100]!r}", field)
    if record.status is not JobStatus.COMPLETED or not (record.result or {}).get("videos"):
        raise ApiError(409, ErrorCode.NOT_READY, f"the video is {_STATUS[record.status]}; only a completed video can "
                       "be remixed or extended", field)
    if record.files_expired:
        raise ApiError(410, ErrorCode.EXPIRED, "the video's files have expired", field)
    return record


def _same_shot(record: JobRecord) -> dict[str, Any]:
    """What a remix or extension keeps of the original: model, size, seed, frame rate."""
    job = JobView.of(record)
    return {"model": record.model, "size": job.output_size, "size_field": "size", "seed": job.params.seeds[0],
            "fps": round(job.params.fps)}


@router.post("/v1/videos/{video_id}/remix", openapi_extra=json_body(RemixBody, creates_task=True))
async def remix_video(video_id: str, request: Request) -> JSONResponse:
    """A new prompt over a finished video: same model, first frame, seed, size and length."""
    ctx = ctx_of(request)
    original = await _finished_video(request, video_id, "video_id")
    body = validated(RemixBody, await json_object(request))
    job = JobView.of(original)
    frame_ref = next((r for role, r in job.inputs() if role == "source"), None)
    data = await ctx.service.input_bytes(original, frame_ref.rsplit("/", 1)[-1]) if frame_ref else None
    if data is None:
        raise ApiError(410, ErrorCode.EXPIRED, "the original's first frame is no longer stored", "video_id")
    ask = VideoAsk(prompt=body.prompt, frames=(ImageInput(field="video_id", data=data),), duration=job.seconds,
                   dialect_note={"remixed_from_video_id": original.id}, **_same_shot(original))
    job_id, _ = await ctx.service.submit_video(ask, caller=caller(request.scope))
    return JSONResponse(video_object(await record_or_404(request, job_id)))


@router.post("/v1/videos/extensions", openapi_extra=json_body(ExtendBody, multipart=True, creates_task=True))
async def extend_video(request: Request) -> JSONResponse:
    """Continue a finished video from its last frame for `seconds` more; the result is the two stitched."""
    ctx = ctx_of(request)
    fields, files = await read_json_or_multipart(request, {"video": "video"}, 1, "the video to extend (an MP4, "
                                                 "or video[id] of a finished video)")
    if "video[id]" in fields:  # the multipart spelling of {"video": {"id": ...}}
        fields["video"] = {"id": fields.pop("video[id]")}
    if files:
        body = validated(UploadExtendBody, fields)
        name, size, last = await asyncio.to_thread(_keep_upload, ctx.outputs, files["video"][0].data)
        ask = VideoAsk(model=ctx.names.resolve("openai.videos", body.model), prompt=body.prompt,
                       frames=(ImageInput(field="video", data=last),), duration=_seconds(body.seconds), size=size,
                       size_field="video", continues=name, continues_upload=True)
        job_id, _ = await ctx.service.submit_video(ask, caller=caller(request.scope))
        return JSONResponse(video_object(await record_or_404(request, job_id)))
    body = validated(ExtendBody, fields)
    if "id" not in body.video:
        raise ApiError(422, ErrorCode.MISSING_FIELD, "video must name a finished video: {\"id\": ...}", "video")
    original = await _finished_video(request, body.video["id"], "video")
    clip = original.result["videos"][0]  # type: ignore[index]
    data = await asyncio.to_thread(ctx.outputs.read, clip["file"])
    if data is None:
        raise ApiError(410, ErrorCode.EXPIRED, "the video's file is no longer stored", "video")
    last = await asyncio.to_thread(_last_frame_png, data)
    ask = VideoAsk(prompt=body.prompt, frames=(ImageInput(field="video", data=last),),
                   duration=_seconds(body.seconds), continues=clip["file"], **_same_shot(original))
    job_id, _ = await ctx.service.submit_video(ask, caller=caller(request.scope))
    return JSONResponse(video_object(await record_or_404(request, job_id)))


def _last_frame_png(mp4: bytes) -> bytes:
    out = io.BytesIO()
    Image.fromarray(decode_frames(mp4)[0][-1]).save(out, "PNG")
    return out.getvalue()


def _keep_upload(outputs: OutputStore, mp4: bytes) -> tuple[str, tuple[int, int], bytes]:
    """An uploaded clip to extend, stored beside the outputs (re-encoded: what is kept is always a clip this server
    wrote): its name, size, and last frame as PNG."""
    try:
        frames, fps = decode_frames(mp4)
    except ValueError as exc:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, f"video: {exc}; send an MP4", "video") from None
    stored = outputs.save_video(frames, fps, None, 0)
    out = io.BytesIO()
    Image.fromarray(frames[-1]).save(out, "PNG")
    return stored.name, (int(frames.shape[2]), int(frames.shape[1])), out.getvalue()


class EditBody(BaseModel):
    """POST /v1/videos/edits (refused: documented so clients see the refusal's shape)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=32000)
    video: dict[str, str] | None = None


@router.post("/v1/videos/edits", openapi_extra=json_body(EditBody, multipart=True))
async def edit_video(request: Request) -> JSONResponse:
    """Refused: no video-to-video editing model is served."""
    raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "video edits need a video-to-video model, which this server "
                   "does not run; remix (POST /v1/videos/{id}/remix) re-renders a video with a new prompt", "video")


@router.get("/v1/videos")
async def list_videos(request: Request, after: str | None = Query(None, max_length=100),
                      limit: int = Query(20, ge=1, le=100), order: Literal["asc", "desc"] = "desc") -> JSONResponse:
    """The caller's videos: newest first (or oldest first with `order=asc`), `limit` per page, `after` the last id
    of the previous page."""
    ctx = ctx_of(request)
    video_ids = ctx.catalog.video_ids()
    records: list[JobRecord] = []
    before: tuple[float, str] | None = None
    scanned = 0
    while scanned < _LIST_SCAN:
        page = await ctx.service.list(caller(request.scope), 100, before)
        records += [r for r in page if r.model in video_ids]
        scanned += len(page)
        if len(page) < 100:
            break
        before = (page[-1].created_at, page[-1].id)
    if order == "asc":
        records.reverse()
    if after is not None:
        position = next((i for i, r in enumerate(records) if r.id == after), None)
        if position is None:
            raise ApiError(422, ErrorCode.INVALID_REQUEST, "after must be the id of a video in the listing", "after")
        records = records[position + 1:]
    page_records = records[:limit]
    data = [video_object(r) for r in page_records]
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": len(records) > limit})


@router.get("/v1/videos/{video_id}")
async def get_video(video_id: str, request: Request) -> JSONResponse:
    """The Video object."""
    return JSONResponse(video_object(await record_or_404(request, video_id, "video_id")))


@router.delete("/v1/videos/{video_id}")
async def delete_video(video_id: str, request: Request) -> JSONResponse:
    """Delete a finished video and its files; 409 while it is queued or running."""
    ctx = ctx_of(request)
    record = await record_or_404(request, video_id, "video_id")
    if record.status not in FINAL_STATES or not await ctx.service.delete(video_id):
        raise ApiError(409, ErrorCode.NOT_FINISHED, f"the video is {_STATUS[record.status]}; it can be deleted once "
                       "it has finished", "video_id")
    return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})


@router.get("/v1/videos/{video_id}/content")
async def video_content(video_id: str, request: Request, variant: str = "video") -> Response:
    """The finished MP4 (variant=video) or its first frame (variant=thumbnail)."""
    ctx = ctx_of(request)
    record = await record_or_404(request, video_id, "video_id")
    if record.status is not JobStatus.COMPLETED or not record.result or not record.result.get("videos"):
        raise ApiError(409, ErrorCode.NOT_READY, "the video is not completed yet; poll GET /v1/videos/{id}")
    entry = record.result["videos"][0]
    if variant not in ("video", "thumbnail"):
        raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, "variant must be video or thumbnail", "variant")
    name = entry["file"] if variant == "video" else entry["poster"]["file"]
    response = file_response(ctx.outputs, name, request)
    if response is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, "the output file is gone")
    return response
