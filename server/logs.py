"""Logging set-up: plain lines for people, or one JSON object per line (`--log-format json`) for log pipelines,
each carrying the request id of the HTTP request it happened in and the job id it is about.

Every HTTP response has an `X-Request-Id`: the client's own when it sent a sane one (so its logs and ours join),
else a fresh one.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID: ContextVar[str | None] = ContextVar("darkroom_request_id", default=None)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, job_id (and an exception's text)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) +
                 f".{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
                 "job_id": getattr(record, "job_id", None)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Root logging for the server process (`fmt` is "text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RequestIdMiddleware:
    """Give every request an id (the client's X-Request-Id when sane), expose it to logs, and answer with it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_ID.match(given) else secrets.token_hex(8)
        token = REQUEST_ID.set(request_id)

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, with_id)
        finally:
            REQUEST_ID.reset(token)
