"""The OpenAPI document as the server really behaves: for each route only the errors it can answer, each with a
real example body in its dialect's shape; one tag per dialect (darkroom's own first, then the providers, then the
operational routes); a unique operation id and summary per route; both answers of the native submit routes
(200 sync, 202 queued) and the links between submit, status and cancel, so clients, generators and schemathesis's
stateful runs see the real contract.

Routes that create tasks say so in their `openapi_extra` (`json_body(..., creates_task=True)`): they can also be
refused for capacity (429), shutting down or a busy store (503), a full disk (507) and the request's images
(413, 422); those that wait for the render (`waits=True`) can time out (504) or report the render's failure (500).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from server.api import docs
from server.api.auth import UNAUTHORIZED
from server.api.dialect import Dialect, ErrorShaper
from server.errors import ApiError, ErrorCode
from server.studio import routes as studio

CREATES_TASK = "x-darkroom-creates-task"
WAITS = "x-darkroom-waits"

ERROR_BODY = {
    "type": "object",
    "description": "darkroom's {error: {code, message, field}}, plus a provider's own keys on its routes; fal's "
                   "and Black Forest Labs' unknown-request answers are {status: NOT_FOUND} like theirs",
    "anyOf": [{"required": ["error"]}, {"required": ["status"]}],
    "properties": {"error": {"type": "object"}, "status": {}},
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
# Routes whose success is not JSON.
_NON_JSON_OK = {
    "/api/v1/tasks/{task_id}/events": {"text/event-stream": {"schema": {
        "type": "object", "description": "one event: `status`, `progress`, then `completed`, `failed` or `cancelled`",
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}}},
    "/files/{name}": {t: _BINARY for t in ("image/png", "image/jpeg", "image/webp", "video/mp4")},
    "/v1/videos/{video_id}/content": {t: _BINARY for t in ("video/mp4", "image/png", "image/jpeg", "image/webp")},
}
_NATIVE_SUBMITS = ("/api/v1/images/generate", "/api/v1/videos/generate")
OPERATIONS_TAG = {"name": "operations", "description": "Liveness, readiness, the engine's state and Prometheus "
                  "metrics."}
FILES_TAG = {"name": "files", "description": "Generated images and clips by their signed URLs."}

# One real example per code: the status it comes with and a message as the server writes it.
_EXAMPLES: dict[tuple[ErrorCode, int], tuple[str, str | None]] = {
    (ErrorCode.UNAUTHORIZED, 401): (UNAUTHORIZED.message, None),
    (ErrorCode.RATE_LIMITED, 429): ("key 'studio-a' is limited to 120 requests per minute; retry in 3 s", None),
    (ErrorCode.QUEUE_FULL, 429): ("the queue is full (1000 jobs waiting or running); retry after 10 s", None),
    (ErrorCode.QUOTA_EXCEEDED, 429): (("key 'studio-a' has used its 2000 jobs for the last 24 hours; the next one "
                                      "frees up in 5400 s"), None),
    (ErrorCode.SHUTTING_DOWN, 503): (("the server is shutting down or restarting; retry in 10 s (queued jobs are "
                                     "kept)"), None),
    (ErrorCode.STORE_BUSY, 503): (("the job database is busy (locked or slow) and could not answer in time; nothing "
                                  "was accepted. Retry in 5 s"), None),
    (ErrorCode.STORAGE_FULL, 507): (("the server's storage is full, so the request could not be stored; nothing was "
                                    "kept of it. Retry later (the operator has to free space)"), None),
    (ErrorCode.NOT_FOUND, 404): ("no task with id 'task_1796430000000_0123456789abcdef'", "task_id"),
    (ErrorCode.EXPIRED, 410): ("this file has expired (outputs are kept for 24 h); run the task again", None),
    (ErrorCode.NOT_FINISHED, 409): ("the task is processing; cancel it first, then delete it", "task_id"),
    (ErrorCode.IDEMPOTENCY_KEY_REUSED, 422): (("this Idempotency-Key was already used with a different request "
                                              "body; use a new key for a new request"), "Idempotency-Key"),
    (ErrorCode.INVALID_REQUEST, 422): ("num_images: Input should be less than or equal to 4", "num_images"),
    (ErrorCode.JSON_TOO_DEEP, 400): ("the JSON body nests deeper than 32 levels", None),
    (ErrorCode.PAYLOAD_TOO_LARGE, 413): ("the request body is larger than 67108864 bytes", None),
    (ErrorCode.TOO_MANY_PARTS, 413): ("the multipart body has more than 17 files or 64 fields", None),
    (ErrorCode.IMAGE_TOO_LARGE, 413): ("image is larger than 20971520 bytes", "image_urls[0]"),
    (ErrorCode.UNSUPPORTED_MEDIA_TYPE, 415): (("this route takes application/json or multipart/form-data; got "
                                              "text/plain"), None),
    (ErrorCode.UNKNOWN_MODEL, 422): (("unknown model 'flux-kontext'; valid ids: flux-kontext-max, flux-kontext-pro, "
                                     "..."), "model"),
    (ErrorCode.UNKNOWN_FIELD, 422): ("unknown field 'temprature': remove it; valid fields: model, prompt, ...",
                                     "temprature"),
    (ErrorCode.MISSING_FIELD, 422): ("prompt is required", "prompt"),
    (ErrorCode.PROMPT_TOO_LONG, 422): ("prompt is longer than 4000 characters; shorten it", "prompt"),
    (ErrorCode.INVALID_IMAGE, 422): ("image_urls[0] is not a PNG, JPEG, WebP or GIF image", "image_urls[0]"),
    (ErrorCode.TOO_MANY_IMAGES, 422): ("flux-kontext-pro takes at most 4 source images", "image_urls"),
    (ErrorCode.UNSUPPORTED_ASPECT_RATIO, 422): ("aspect_ratio 5:1 is not one of flux-kontext-pro's: 1:1, 16:9, ...",
                                                "aspect_ratio"),
    (ErrorCode.UNSUPPORTED_QUALITY, 422): ("quality 4K is not one of flux-kontext-pro's: 512, 1K, 2K", "quality"),
    (ErrorCode.UNSUPPORTED_FEATURE, 422): (("flux-kontext-pro takes no mask (it edits from the instruction alone); "
                                           "remove mask_url"), "mask_url"),
    (ErrorCode.INSUFFICIENT_VRAM, 422): (("sora-2-pro at 1920x1080 needs 92.10 GB of GPU memory even with offload, "
                                         "and the largest GPU budget here is 78.00 GB; lower the size"), None),
    (ErrorCode.URL_NOT_ALLOWED, 422): ("the image URL points to a private or local address", "image_urls[0]"),
    (ErrorCode.FETCH_FAILED, 422): ("the image URL answered 404", "image_urls[0]"),
    (ErrorCode.GENERATION_FAILED, 500): (("the model failed while rendering this job; the server log has details "
                                         "for task_1796430000000_0123456789abcdef"), None),
    (ErrorCode.GENERATION_FAILED, 504): (("the job is still running after the synchronous wait; poll "
                                         "/api/v1/tasks/task_1796430000000_0123456789abcdef for it"), None),
    (ErrorCode.ALREADY_FINISHED, 409): ("the task was cancelled while this request waited", None),
    (ErrorCode.NOT_READY, 400): ("the request is still in progress; poll its status_url", None),
    (ErrorCode.NOT_READY, 409): ("the video is not completed yet; poll GET /v1/videos/{id}", None),
    (ErrorCode.METHOD_NOT_ALLOWED, 405): ("this route does not accept that method", None),
}
# Answers only one route gives (its own state machine), beyond what the rules below derive.
_ROUTE_SPECIFIC: dict[tuple[str, str], list[tuple[ErrorCode, int]]] = {
    ("get", "/fal-ai/{app}/requests/{request_id}"): [(ErrorCode.NOT_READY, 400), (ErrorCode.GENERATION_FAILED, 500),
                                                    (ErrorCode.ALREADY_FINISHED, 409)],
    ("get", "/v1/videos/{video_id}/content"): [(ErrorCode.NOT_READY, 409)],
    ("post", "/fal-ai/{model_path}"): [(ErrorCode.METHOD_NOT_ALLOWED, 405)],
    ("get", "/v1/get_result"): [(ErrorCode.NOT_FOUND, 404)],
}
# Answers in the provider's own shape rather than an error object (as its clients expect them).
_OWN_BODIES: dict[tuple[str, ErrorCode, int], dict[str, Any]] = {
    ("/v1/get_result", ErrorCode.NOT_FOUND, 404): {"id": "task_1796430000000_0123456789abcdef",
                                                   "status": "Task not found", "result": None},
    ("/fal-ai/{app}/requests/{request_id}/cancel", ErrorCode.NOT_FOUND, 404): {"status": "NOT_FOUND"},
}
_STATUS_TEXT = {400: "Malformed body (not JSON, too deep, bad multipart)", 401: "Missing or wrong API key",
                404: "No such task, file or model", 409: "Conflicts with the task's state", 410: "Expired",
                413: "Body, image or multipart part over its limit", 415: "Unsupported content type",
                422: "A field is invalid: the error names it and says what to change",
                429: "Queue full, rate limit or quota reached (see Retry-After)",
                405: "The path exists for another method", 500: "The render failed",
                503: "Shutting down, or the job store is busy (see Retry-After)",
                504: "Still running after the synchronous wait", 507: "The server's storage is full"}
_INPUT_ERRORS = (ErrorCode.INVALID_REQUEST, ErrorCode.UNKNOWN_FIELD, ErrorCode.MISSING_FIELD)
_TASK_ERRORS = (ErrorCode.UNKNOWN_MODEL, ErrorCode.PROMPT_TOO_LONG, ErrorCode.INVALID_IMAGE, ErrorCode.TOO_MANY_IMAGES,
                ErrorCode.UNSUPPORTED_ASPECT_RATIO, ErrorCode.UNSUPPORTED_QUALITY, ErrorCode.UNSUPPORTED_FEATURE,
                ErrorCode.INSUFFICIENT_VRAM, ErrorCode.URL_NOT_ALLOWED, ErrorCode.FETCH_FAILED,
                ErrorCode.IMAGE_TOO_LARGE, ErrorCode.QUEUE_FULL, ErrorCode.QUOTA_EXCEEDED, ErrorCode.SHUTTING_DOWN,
                ErrorCode.STORAGE_FULL)


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its nested models inlined: embedded in a route's `openapi_extra`, pydantic's
    `#/$defs/...` references would point nowhere in the OpenAPI document (ReDoc stops rendering at the first)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline({**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


def json_body(model: type[BaseModel], multipart: bool = False, creates_task: bool = False,
              waits: bool = False) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body itself: the model's JSON schema (and multipart), and whether
    the route creates a task (and waits for it)."""
    content: dict[str, Any] = {"application/json": {"schema": body_schema(model)}}
    if multipart:
        content["multipart/form-data"] = {"schema": {"type": "object"}}
    return {"requestBody": {"required": True, "content": content}, **route_facts(creates_task, waits)}


def route_facts(creates_task: bool = False, waits: bool = False) -> dict[str, Any]:
    """The `openapi_extra` keys that say a route creates a task, and whether it waits for its render."""
    return {**({CREATES_TASK: True} if creates_task else {}), **({WAITS: True} if waits else {})}


def _open(path: str) -> bool:
    return path in {"/health"} | docs.OPEN_PATHS | studio.OPEN_PATHS or path.startswith(studio.PREFIX)


Example = tuple[ErrorCode, int]
"""An error a route can answer with: its code and status (one code may come with two statuses)."""


def _pairs(*codes: ErrorCode) -> list[Example]:
    """Each code with the status it always comes with."""
    return [next(key for key in _EXAMPLES if key[0] is code) for code in codes]


def route_errors(path: str, method: str, op: dict[str, Any], keyed: bool) -> list[Example]:
    """The errors `method path` can answer with (see the module docstring)."""
    out: list[Example] = []
    if keyed and not _open(path):
        out += _pairs(ErrorCode.UNAUTHORIZED, ErrorCode.RATE_LIMITED)
    if path in ("/health", "/ready", "/metrics") or _open(path):
        return out
    body = "requestBody" in op
    multipart = "multipart/form-data" in op.get("requestBody", {}).get("content", {})
    if body:
        out += _pairs(ErrorCode.JSON_TOO_DEEP, ErrorCode.PAYLOAD_TOO_LARGE)
        out += _pairs(ErrorCode.TOO_MANY_PARTS, ErrorCode.UNSUPPORTED_MEDIA_TYPE) if multipart else []
    if body or op.get("parameters"):
        out += _pairs(*_INPUT_ERRORS)
    if "{" in path:
        out += _pairs(ErrorCode.NOT_FOUND)
    if path.startswith("/files/") or path.endswith("/inputs/{name}"):
        out += _pairs(ErrorCode.EXPIRED)
    if path.endswith("/cancel"):
        out.append((ErrorCode.ALREADY_FINISHED, 409))
    if method == "delete" and path.startswith("/api/v1/tasks/"):
        out += _pairs(ErrorCode.NOT_FINISHED)
    if op.get(CREATES_TASK):
        out += _pairs(*_TASK_ERRORS)
        if path in _NATIVE_SUBMITS:
            out += _pairs(ErrorCode.IDEMPOTENCY_KEY_REUSED)
    if op.get(WAITS):
        out += [(ErrorCode.GENERATION_FAILED, 500), (ErrorCode.GENERATION_FAILED, 504),
                (ErrorCode.ALREADY_FINISHED, 409)]
    out += _ROUTE_SPECIFIC.get((method, path), [])
    if not path.startswith("/files/"):
        out += _pairs(ErrorCode.STORE_BUSY)  # every other API route reads or writes the job store
    return list(dict.fromkeys(out))


def _responses(path: str, errors: Iterable[Example], shaper: ErrorShaper) -> dict[str, Any]:
    by_status: dict[int, dict[str, Any]] = {}
    for code, status in errors:
        message, field = _EXAMPLES[(code, status)]
        example = _OWN_BODIES.get((path, code, status)) or shaper.body(ApiError(status, code, message, field), path)
        by_status.setdefault(status, {})[str(code)] = {"summary": str(code), "value": example}
    return {str(status): {"description": _STATUS_TEXT[status], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorBody"}, "examples": examples}}}
        for status, examples in sorted(by_status.items())}


_OPERATIONS = frozenset({"/health", "/ready", "/metrics", "/api/v1/engine"})


def _tag(path: str, dialects: tuple[Dialect, ...]) -> str:
    if path in _OPERATIONS:
        return OPERATIONS_TAG["name"]
    if path.startswith("/files/"):
        return FILES_TAG["name"]
    owner = next((d for d in dialects if d.owns(path)), None)
    return owner.tag if owner is not None else OPERATIONS_TAG["name"]


def _operation_id(tag: str, function: str, path: str, taken: set[str]) -> str:
    """`<tag>_<function>`, suffixed with the path's version (v1beta...) or a number when two routes share it."""
    base = re.sub(r"[^a-z0-9]+", "_", f"{tag}_{function}".lower()).strip("_")
    name = base
    version = next((part for part in path.split("/") if re.fullmatch(r"v\d+\w*", part)), None)
    if name in taken and version:
        name = f"{base}_{version}"
    n = 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def documented_openapi(app: FastAPI, dialects: tuple[Dialect, ...]) -> dict[str, Any]:
    """Build (once) and return the app's OpenAPI document (model ids and names as enums of what is served)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["ErrorBody"] = ERROR_BODY
    ctx = app.state.ctx
    shaper = ErrorShaper(dialects)
    ordered = sorted(dialects, key=lambda d: d.doc_order)
    schema["tags"] = [{"name": d.tag, "description": d.tag_description} for d in ordered] + [FILES_TAG,
                                                                                            OPERATIONS_TAG]
    order = {t["name"]: i for i, t in enumerate(schema["tags"])}
    functions = {(route.path_format, m.lower()): route.name for route in app.routes
                 for m in getattr(route, "methods", None) or ()}
    taken: set[str] = set()
    summaries: set[str] = set()
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            tag = _tag(path, dialects)
            op["tags"] = [tag]
            op["operationId"] = _operation_id(tag, functions.get((path, method), op["summary"]), path, taken)
            if op["summary"] in summaries:  # /v1beta and /v1 flavours of one route
                op["summary"] += f" ({path.split('/')[1]})"
            summaries.add(op["summary"])
            responses = {k: v for k, v in op.get("responses", {}).items() if not k.startswith(("4", "5"))}
            responses.update(_responses(path, route_errors(path, method, op, ctx.keys.enabled), shaper))
            op["responses"] = responses
            if path in _NON_JSON_OK and "200" in responses:
                responses["200"]["content"] = _NON_JSON_OK[path]
    _native_submits(schema)
    if "/ready" in schema["paths"]:
        schema["paths"]["/ready"]["get"]["responses"]["503"] = {
            "description": "Not ready: the body lists the problems (no worker, models loading, draining, storage "
                           "full, store busy)", "content": {"application/json": {"schema": {"type": "object"}}}}
    # Operations in tag order (then path), so /docs opens on darkroom's own API rather than /health.
    schema["paths"] = dict(sorted(schema["paths"].items(), key=lambda item: (
        min(order[op["tags"][0]] for op in item[1].values()), item[0])))
    _served_names(schema, ctx)
    app.openapi_schema = schema
    return schema


def _native_submits(schema: dict[str, Any]) -> None:
    """The native submit routes answer 200 (synchronous) or 202 (queued), with links to status and cancel."""
    paths = schema["paths"]
    links = {
        "GetTask": {"operationId": paths["/api/v1/tasks/{task_id}"]["get"]["operationId"],
                    "parameters": {"task_id": "$response.body#/task_id"}},
        "CancelTask": {"operationId": paths["/api/v1/tasks/{task_id}/cancel"]["post"]["operationId"],
                       "parameters": {"task_id": "$response.body#/task_id"}},
    }
    task = {"type": "object", "required": ["task_id"], "properties": {"task_id": {"type": "string"}}}
    for path in _NATIVE_SUBMITS:
        responses = paths[path]["post"]["responses"]
        responses.pop("200", None)
        responses.pop("202", None)
        if path == "/api/v1/images/generate":
            responses["200"] = {"description": "Finished (synchronous request): the task with its outputs",
                                "content": {"application/json": {"schema": task}}, "links": links}
        responses["202"] = {"description": "Queued: poll or cancel it by task_id",
                            "content": {"application/json": {"schema": task}}, "links": links}


def _enum_param(op: dict[str, Any], name: str, values: list[str]) -> None:
    for param in op.get("parameters", []):  # an empty set is left open (nothing would be generable)
        if param.get("name") == name and values:
            param["schema"] = {**param.get("schema", {}), "enum": values}


def _enum_body_model(op: dict[str, Any], values: list[str]) -> None:
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "model" in schema.get("properties", {}) and values:
        schema["properties"]["model"] = {"type": "string", "enum": values}


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
