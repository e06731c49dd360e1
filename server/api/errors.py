"""Rendering every failure as `{"error": {"code", "message", "field"}}` (plus the owning dialect's own keys, see
server/api/dialect.py) — never a trace or a path."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from server.api.dialect import ErrorShaper
from server.errors import ApiError, ErrorCode
from server.faults import StorageFull, StoreBusy, is_disk_full, is_store_busy

log = logging.getLogger("darkroom.api")

_FIELD_CODES = {"prompt": {"string_too_long": ErrorCode.PROMPT_TOO_LONG}}

ERROR_CODE: ContextVar[str | None] = ContextVar("darkroom_error_code", default=None)
"""The error code of the answer being sent, for the request's log event (server/api/access_log.py)."""


def error_response(err: ApiError, shaper: ErrorShaper, path: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON response for an ApiError, shaped for the dialect that owns `path`."""
    ERROR_CODE.set(str(err.code))
    return JSONResponse(shaper.body(err, path), status_code=err.status, headers=headers)


async def send_error(send: Send, err: ApiError, path: str, shaper: ErrorShaper) -> None:
    """Answer with `err` straight from ASGI middleware (before any route ran), shaped like `error_response`."""
    ERROR_CODE.set(str(err.code))
    body = json.dumps(shaper.body(err, path)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def from_validation_errors(errors: Sequence[Any], valid_fields: Sequence[str] = ()) -> ApiError:
    """Turn the first pydantic error into one ApiError with a stable code and the field to change."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    field = ".".join(loc) or None
    kind = first.get("type", "")
    top = loc[0] if loc else ""
    if kind == "extra_forbidden":
        hint = f"; valid fields: {', '.join(valid_fields)}" if valid_fields else ""
        return ApiError(422, ErrorCode.UNKNOWN_FIELD, f"unknown field {field!r}: remove it{hint}", field)
    if kind == "missing":
        return ApiError(422, ErrorCode.MISSING_FIELD, f"{field} is required", field)
    if kind in ("json_invalid", "model_attributes_type", "dict_type", "model_type"):
        return ApiError(400, ErrorCode.INVALID_REQUEST, "the body must be a JSON object", field)
    code = _FIELD_CODES.get(top, {}).get(kind, ErrorCode.INVALID_REQUEST)
    if code is ErrorCode.PROMPT_TOO_LONG:
        limit = (first.get("ctx") or {}).get("max_length", "the limit")
        return ApiError(422, code, f"prompt is longer than {limit} characters; shorten it", field)
    # pydantic's message names the constraint ("Input should be less than or equal to 200") and holds no paths.
    return ApiError(422, code, f"{field}: {first.get('msg', 'invalid value')}", field)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path."""
    methods: set[str] = set()
    for route in request.app.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path) and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def install_error_handlers(app: FastAPI, shaper: ErrorShaper) -> None:
    """Map every exception type the app can raise to the one error shape (per dialect)."""

    def respond(request: Request, err: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
        return error_response(err, shaper, request.url.path, headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond(request, exc, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, from_validation_errors(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        return respond(request, from_validation_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = ApiError(404, ErrorCode.NOT_FOUND, "no such route or resource")
        elif exc.status_code == 405:
            err = ApiError(405, ErrorCode.METHOD_NOT_ALLOWED, "this route does not accept that method")
            # Starlette names only the first route that matched the path; a path served by several routes (GET
            # and POST /v1/files) allows all of their methods.
            return respond(request, err, {"Allow": ", ".join(allowed_methods(request))})
        else:
            err = ApiError(exc.status_code, ErrorCode.INVALID_REQUEST, "the request could not be processed")
        return respond(request, err, getattr(exc, "headers", None))

    @app.exception_handler(StoreBusy)
    @app.exception_handler(StorageFull)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        err = fault_error(exc)
        assert err is not None
        log.warning("%s on %s %s: %s", err.code, request.method, request.url.path, exc)
        return respond(request, err, err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        err = fault_error(exc)
        if err is None:
            log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            err = ApiError(500, ErrorCode.INTERNAL_ERROR, "internal error; the server log has details")
        else:
            log.warning("%s on %s %s: %s", err.code, request.method, request.url.path, exc)
        return respond(request, err, err.headers)


STORE_RETRY_AFTER_S = 5
STORAGE_RETRY_AFTER_S = 60


def fault_error(exc: BaseException) -> ApiError | None:
    """The answer for a fault of the machine rather than the request (a full disk, a locked job store), or None."""
    if is_disk_full(exc):
        return ApiError(507, ErrorCode.STORAGE_FULL, "the server's storage is full, so the request could not be "
                        "stored; nothing was kept of it. Retry later (the operator has to free space)", None,
                        headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)})
    if is_store_busy(exc):
        return ApiError(503, ErrorCode.STORE_BUSY, "the job database is busy (locked or slow) and could not answer "
                        f"in time; nothing was accepted. Retry in {STORE_RETRY_AFTER_S} s", None,
                        headers={"Retry-After": str(STORE_RETRY_AFTER_S)})
    return None
