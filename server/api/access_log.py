"""One structured log event per HTTP request, accepted or refused: method, route, status, outcome, the error code
of a refusal, the request id, the name of the key that sent it (never the key), dialect, model and milliseconds.

It sits inside the metrics middleware and outside the key check, so a 401 or 429 from the key check is logged as
well as a route's own answers. Liveness, readiness, metrics and documentation requests (polled by load balancers
and Prometheus) are logged at DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.auth import SCOPE_KEY
from server.api.errors import ERROR_CODE
from server.logs import event
from server.metrics import REQUEST_MODEL
from server.sent_status import SentStatus

log = logging.getLogger("darkroom.requests")

_QUIET = ("/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs-assets/", "/favicon.ico")


class AccessLogMiddleware:
    """Logs each request's outcome as a `request` event."""

    def __init__(self, app: ASGIApp, dialect_of: Callable[[str], str]) -> None:
        self.app = app
        self.dialect_of = dialect_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = SentStatus(send)
        token = ERROR_CODE.set(None)
        try:
            await self.app(scope, receive, sent.send)
        finally:
            # Nothing sent means an exception is on its way to the outermost error handler: a 500.
            self._log(scope, sent.status or 500, ERROR_CODE.get() if sent.status else "internal_error", started)
            ERROR_CODE.reset(token)

    def _log(self, scope: Scope, status: int, code: str | None, started: float) -> None:
        path = scope["path"]
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        outcome = "ok" if status < 400 else "refused" if status < 500 else "error"
        level = logging.DEBUG if path.startswith(_QUIET) else logging.ERROR if status >= 500 else logging.INFO
        if not log.isEnabledFor(level):
            return
        model = REQUEST_MODEL.get() or None
        event(log, "request", f"{scope['method']} {route} -> {status}" + (f" {code}" if code else ""), level,
              method=scope["method"], route=route, status=status, outcome=outcome, code=code,
              key=scope.get(SCOPE_KEY), dialect=self.dialect_of(path), model=model,
              ms=round((time.perf_counter() - started) * 1000, 1))
