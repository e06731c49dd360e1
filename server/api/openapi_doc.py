"""The OpenAPI document as the server really behaves: every error status each route can answer with (one error
shape for all), both answers of the native submit routes (200 sync, 202 queued) and the links between submit,
status and cancel, so clients, generators and schemathesis's stateful runs see the real contract."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

# Statuses any route may answer with: auth (401), rate limit and queue (429), body limits (413), bad input,
# unknown ids, draining (503). Each has the same body: {"error": {...}} (plus a provider's own keys on its routes).
ERROR_STATUSES = {
    "400": "Malformed body (not JSON, too deep, bad multipart)",
    "401": "Missing or wrong API key",
    "404": "No such task, file or route",
    "405": "Method not allowed on this route",
    "409": "The task already finished (cancel) or the same Idempotency-Key is still being accepted",
    "410": "The file or the task's files expired (see retention_hours)",
    "413": "Body, image or multipart part over its limit",
    "415": "Unsupported content or image type",
    "422": "A field is invalid: the error names it and says what to change",
    "429": "Queue full, rate limit or quota reached (see Retry-After)",
    "503": "Shutting down or restarting, or not ready (see Retry-After)",
}
ERROR_BODY = {
    "type": "object",
    "description": "darkroom's {error: {code, message, field}}, plus a provider's own keys on its routes; fal's "
                   "and Black Forest Labs' unknown-request answers are {status: NOT_FOUND} like theirs",
    "anyOf": [{"required": ["error"]}, {"required": ["status"]}],
    "properties": {"error": {"type": "object"}, "status": {}},
}
_NATIVE_SUBMITS = ("/api/v1/images/generate", "/api/v1/videos/generate")
_BINARY = {"schema": {"type": "string", "format": "binary"}}
# Routes whose success is not JSON.
_NON_JSON_OK = {
    "/api/v1/tasks/{task_id}/events": {"text/event-stream": {"schema": {
        "type": "object", "description": "one event: `status`, `progress`, then `completed`, `failed` or `cancelled`",
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}}},
    "/files/{name}": {t: _BINARY for t in ("image/png", "image/jpeg", "image/webp", "video/mp4")},
    "/v1/videos/{video_id}/content": {t: _BINARY for t in ("video/mp4", "image/png", "image/jpeg", "image/webp")},
}


def json_body(model: type[BaseModel], multipart: bool = False) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body itself: the model's JSON schema (and multipart)."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if multipart:
        content["multipart/form-data"] = {"schema": {"type": "object"}}
    return {"requestBody": {"required": True, "content": content}}


def _enum_param(op: dict[str, Any], name: str, values: list[str]) -> None:
    for param in op.get("parameters", []):  # an empty set is left open (nothing would be generable)
        if param.get("name") == name and values:
            param["schema"] = {**param.get("schema", {}), "enum": values}


def _enum_body_model(op: dict[str, Any], values: list[str]) -> None:
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "model" in schema.get("properties", {}) and values:
        schema["properties"]["model"] = {"type": "string", "enum": values}


def documented_openapi(app: FastAPI) -> dict[str, Any]:
    """Build (once) and return the app's OpenAPI document (model ids and names as enums of what is served)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["ErrorBody"] = ERROR_BODY
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    operation_ids = {(path, method): op.get("operationId") for path, ops in schema["paths"].items()
                     for method, op in ops.items()}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            for status, description in ERROR_STATUSES.items():
                responses[status] = {"description": description, "content": error_ref}
            if path in _NON_JSON_OK and "200" in responses:
                responses["200"]["content"] = _NON_JSON_OK[path]
            if path in _NATIVE_SUBMITS and method == "post":
                task = {"type": "object", "required": ["task_id"], "properties": {"task_id": {"type": "string"}}}
                links = {
                    "GetTask": {"operationId": operation_ids[("/api/v1/tasks/{task_id}", "get")],
                                "parameters": {"task_id": "$response.body#/task_id"}},
                    "CancelTask": {"operationId": operation_ids[("/api/v1/tasks/{task_id}/cancel", "post")],
                                   "parameters": {"task_id": "$response.body#/task_id"}},
                }
                ok = {"description": "Finished (synchronous request): the task with its outputs",
                      "content": {"application/json": {"schema": task}}, "links": links}
                queued = {"description": "Queued: poll or cancel it by task_id",
                          "content": {"application/json": {"schema": task}}, "links": links}
                responses.pop("200", None)
                responses.pop("202", None)
                if path == "/api/v1/images/generate":
                    responses["200"] = ok
                responses["202"] = queued
    _served_names(schema, app.state.ctx)
    app.openapi_schema = schema
    return schema


def _served_names(schema: dict[str, Any], ctx: Any) -> None:
    """Model ids in bodies and provider model names in paths are closed sets: say which."""
    paths = schema["paths"]
    image_ids, video_ids = ctx.catalog.ids(), ctx.catalog.video_ids()
    served = set(image_ids) | set(video_ids)
    _enum_body_model(paths["/api/v1/images/generate"]["post"], image_ids)
    _enum_body_model(paths["/api/v1/videos/generate"]["post"], video_ids)
    fal = [n.removeprefix("fal-ai/") for n in ctx.names.names("fal", served)]
    for path in ("/fal-ai/{model_path}", "/sync/fal-ai/{model_path}"):
        _enum_param(paths[path]["post"], "model_path", fal)
    _enum_param(paths["/v1/flux-{variant}"]["post"], "variant",
                [n.removeprefix("flux-") for n in ctx.names.names("bfl", served)])
    for path in ("/v1/models/{model}:generateContent", "/v1beta/models/{model}:generateContent"):
        _enum_param(paths[path]["post"], "model", ctx.names.names("gemini", served))
