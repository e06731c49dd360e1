"""Bounds on what a request body may be: total size, JSON nesting, multipart parts and field sizes.

Each bound is a setting; each refusal a 4xx with a stable code, raised before the body is used. The size cap
is enforced while the body streams in (a missing or lying Content-Length does not get past it).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from fastapi import Request
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(send, BodyTooLarge(self.max_bytes), scope["path"])
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
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
                await send_error(send, exc, scope["path"])


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
    return parse_json_object(await request.body(), request.app.state.ctx.settings.max_json_depth)


async def read_form(request: Request, max_files: int) -> FormData:
    """The multipart form under the settings' part-count and field-size limits (files are capped by the caller)."""
    settings = request.app.state.ctx.settings
    parts = settings.max_multipart_parts
    try:
        return await request.form(max_files=min(max_files, parts), max_fields=parts,
                                  max_part_size=settings.max_multipart_field_bytes)
    except ApiError:
        raise
    except StarletteHTTPException as exc:
        detail = str(exc.detail)
        if detail.startswith("Too many"):
            raise ApiError(413, ErrorCode.TOO_MANY_PARTS, f"the multipart body has more than {min(max_files, parts)} "
                           f"files or {parts} fields", None) from None
        if "exceeded maximum size" in detail:
            raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, "a multipart text field is larger than "
                           f"{settings.max_multipart_field_bytes} bytes", None) from None
        raise ApiError(400, ErrorCode.INVALID_REQUEST, "the multipart body is malformed") from None
    except Exception:  # noqa: BLE001 - parser internals are not for clients
        raise ApiError(400, ErrorCode.INVALID_REQUEST, "the multipart body is malformed") from None
