"""Bounds on what a request body may be: total size, JSON nesting, multipart parts and field sizes.

Each bound is a setting; each refusal a 4xx with a stable code, raised before the body is used. The size cap
is enforced while the body streams in (a missing or lying Content-Length does not get past it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.dialect import ErrorShaper
from server.api.errors import send_error
from server.errors import ApiError, ErrorCode

# JSON strings may hold brackets; they are blanked out before nesting is counted.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


class BodyTooLarge(ApiError):
    """The body grew past max_body_bytes while streaming."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, ErrorCode.PAYLOAD_TOO_LARGE,
                         f"the request body is larger than {limit} bytes; send fewer or smaller images", None,
                         headers={"Connection": "close"})


class BodySizeLimit:
    """ASGI middleware: 413 payload_too_large for a body over `max_bytes` (declared or counted)."""

    def __init__(self, app: ASGIApp, max_bytes: int, shaper: ErrorShaper,
                 per_path: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default_max = max_bytes
        self.per_path = dict(per_path or {})
        """Routes that take larger bodies (LoRA uploads): path -> their own cap."""
        self.shaper = shaper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"].rstrip("/"), self.default_max)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_error(send, BodyTooLarge(limit), scope["path"], self.shaper)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            # Raised where no handler turned it into a response (e.g. inside the multipart parser's stream).
            if not started:
                await send_error(send, exc, scope["path"], self.shaper)


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays/objects in a JSON text (strings ignored); cheap on multi-MB bodies."""
    stripped = _JSON_STRING.sub(b'""', raw)
    if not stripped:
        return 0
    steps = _OPEN[np.frombuffer(stripped, dtype=np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def parse_json_object(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object: 400 invalid_request when it is not one, 400 json_too_deep past `max_depth`."""
    if json_depth(raw) > max_depth:
        raise ApiError(400, ErrorCode.JSON_TOO_DEEP, f"the JSON body nests deeper than {max_depth} levels")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, ErrorCode.INVALID_REQUEST, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    return data


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object under the app's depth limit."""
    return parse_json_object(await request.body(), request.app.state.ctx.settings.server.max_json_depth)


async def read_form(request: Request, max_files: int) -> FormData:
    """The multipart form under the settings' part-count and field-size limits (files are capped by the caller)."""
    settings = request.app.state.ctx.settings
    parts = settings.server.max_multipart_parts
    try:
        return await request.form(max_files=min(max_files, parts), max_fields=parts,
                                  max_part_size=settings.server.max_multipart_field_bytes)
    except ApiError:
        raise
    except StarletteHTTPException as exc:
        detail = str(exc.detail)
        if detail.startswith("Too many"):
            raise ApiError(413, ErrorCode.TOO_MANY_PARTS, f"the multipart body has more than {min(max_files, parts)} "
                           f"files or {parts} fields", None) from None
        if "exceeded maximum size" in detail:
            raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, "a multipart text field is larger than "
                           f"{settings.server.max_multipart_field_bytes} bytes", None) from None
        raise ApiError(400, ErrorCode.INVALID_REQUEST, "the multipart body is malformed") from None
    except Exception:  # noqa: BLE001 - parser internals are not for clients
        raise ApiError(400, ErrorCode.INVALID_REQUEST, "the multipart body is malformed") from None


@dataclass(frozen=True)
class Upload:
    """One uploaded file part."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None


async def read_multipart(request: Request, roles: Mapping[str, str], max_files: int,
                         list_fields: frozenset[str] = frozenset(), text_parts: frozenset[str] = frozenset(),
                         file_limit: int | None = None) -> tuple[dict[str, Any], dict[str, list[Upload]]]:
    """The one multipart reader: (text fields, files by role). `roles` maps a file part's name to its role;
    any other file part is 422 unknown_field naming the accepted ones, a file over max_image_bytes is 413, a
    repeated text field is 422 unless listed in `list_fields` (those collect into lists). A part named in
    `text_parts` is a text field even when the client sent it as a file (the replicate JS SDK sends its metadata
    JSON as a Blob)."""
    settings = request.app.state.ctx.settings
    limit = file_limit or settings.files.max_image_bytes
    form = await read_form(request, max_files=max_files + len(text_parts))
    fields: dict[str, Any] = {}
    files: dict[str, list[Upload]] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile) and name in text_parts:
                raw = await value.read(settings.server.max_multipart_field_bytes + 1)
                if len(raw) > settings.server.max_multipart_field_bytes:
                    raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, "a multipart text field is larger than "
                                   f"{settings.server.max_multipart_field_bytes} bytes", name)
                value = raw.decode("utf-8", errors="replace")
            if isinstance(value, UploadFile):
                role = roles.get(name)
                if role is None:
                    raise ApiError(422, ErrorCode.UNKNOWN_FIELD, f"unknown file field {name!r}: use "
                                   f"{', '.join(sorted(set(roles)))}", name)
                data = await value.read(limit + 1)
                if len(data) > limit:
                    raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE if file_limit else ErrorCode.IMAGE_TOO_LARGE,
                                   f"the file is larger than {limit} bytes", name)
                files.setdefault(role, []).append(Upload(data, value.filename, value.content_type))
            elif name in list_fields:
                fields.setdefault(name, []).append(value)
            elif name in fields:
                raise ApiError(422, ErrorCode.INVALID_REQUEST, f"field {name!r} was sent twice", name)
            else:
                fields[name] = value
    finally:
        await form.close()
    return fields, files


def content_kind(request: Request) -> str:
    """'json', 'multipart' or the media type as sent (an absent type counts as JSON, as clients assume)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or ctype.endswith("+json") or not ctype:
        return "json"
    return "multipart" if ctype == "multipart/form-data" else ctype


async def read_json_or_multipart(request: Request, roles: Mapping[str, str], max_files: int, what: str,
                                 list_fields: frozenset[str] = frozenset()
                                 ) -> tuple[dict[str, Any], dict[str, list[Upload]]]:
    """A JSON object or a multipart form (see read_multipart); 415 naming both (`what` says which files)."""
    kind = content_kind(request)
    if kind == "json":
        return await read_json_object(request), {}
    if kind == "multipart":
        return await read_multipart(request, roles, max_files, list_fields)
    raise ApiError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"this route takes application/json or "
                   f"multipart/form-data ({what}); got {kind[:60]}", None)
