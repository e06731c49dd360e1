"""Rendering every failure as `{"error": {"code", "message", "field"}}` — never a trace or a path."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from server.errors import ApiError, ErrorCode

log = logging.getLogger("darkroom.api")

_FIELD_CODES = {"prompt": {"string_too_long": ErrorCode.PROMPT_TOO_LONG}}


_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  409: "ABORTED", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
                  500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def shaped_body(err: ApiError, path: str) -> dict[str, Any]:
    """darkroom's error body, plus the keys the provider whose route this is puts errors under, so each SDK
    raises its own error type with darkroom's message (the stable code and field are always kept)."""
    body = err.body()
    ours = body["error"]
    if path.startswith("/v1beta/") or path.endswith(":generateContent"):  # Gemini: {"error": {code, message, status}}
        return {"error": {"code": err.status, "message": err.message, "status": _GOOGLE_STATUS.get(err.status, "UNKNOWN"),
                          "details": [{"darkroom_code": str(err.code), "field": err.field}]}}
    if path.startswith(("/fal-ai/", "/sync/fal-ai/")):  # fal: FastAPI-style detail list
        return {**body, "detail": [{"loc": ["body", err.field] if err.field else ["body"], "msg": err.message,
                                    "type": str(err.code)}]}
    if path.startswith(("/v1/predictions", "/v1/files")) or (path.startswith("/v1/models/") and path.count("/") >= 4):
        return {**body, "title": str(err.code), "detail": err.message, "status": err.status}  # Replicate
    if path.startswith(("/v1/flux-", "/v1/get_result")):
        return {**body, "detail": err.message}  # Black Forest Labs
    if path.startswith(("/v1/images/", "/v1/videos", "/v1/models")):  # OpenAI
        return {"error": {**ours, "type": "invalid_request_error" if err.status < 500 else "server_error",
                          "param": err.field}}
    return body


def error_response(err: ApiError, headers: dict[str, str] | None = None, path: str = "") -> JSONResponse:
    """The JSON response for an ApiError (shaped for the dialect of `path`)."""
    return JSONResponse(shaped_body(err, path), status_code=err.status, headers=headers)


async def send_error(send: Send, err: ApiError, path: str) -> None:
    """Answer with `err` straight from ASGI middleware (before any route ran), shaped like `error_response`."""
    body = json.dumps(shaped_body(err, path)).encode()
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


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception type the app can raise to the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc, headers=exc.headers, path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(from_validation_errors(exc.errors()), path=request.url.path)

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(from_validation_errors(exc.errors()), path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = ApiError(404, ErrorCode.NOT_FOUND, "no such route or resource")
        elif exc.status_code == 405:
            err = ApiError(405, ErrorCode.METHOD_NOT_ALLOWED, "this route does not accept that method")
        else:
            err = ApiError(exc.status_code, ErrorCode.INVALID_REQUEST, "the request could not be processed")
        return error_response(err, headers=getattr(exc, "headers", None), path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(ApiError(500, ErrorCode.INTERNAL_ERROR, "internal error; the server log has details"),
                              path=request.url.path)
