"""The one error type every room raises for a client-visible problem.

It carries an HTTP status and a stable machine-readable code, but imports
nothing from the web framework, so media, catalog and engine code can raise it
and the API layer renders it as ``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable codes clients may branch on. Never rename one; add new ones."""

    INVALID_REQUEST = "invalid_request"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    PROMPT_TOO_LONG = "prompt_too_long"
    UNKNOWN_MODEL = "unknown_model"
    INVALID_IMAGE = "invalid_image"
    IMAGE_TOO_LARGE = "image_too_large"
    TOO_MANY_IMAGES = "too_many_images"
    UNSUPPORTED_ASPECT_RATIO = "unsupported_aspect_ratio"
    UNSUPPORTED_QUALITY = "unsupported_quality"
    UNSUPPORTED_FEATURE = "unsupported_feature"
    UNSUPPORTED_DURATION = "unsupported_duration"
    UNSUPPORTED_RESOLUTION = "unsupported_resolution"
    ALREADY_FINISHED = "already_finished"
    INSUFFICIENT_VRAM = "insufficient_vram"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    URL_NOT_ALLOWED = "url_not_allowed"
    FETCH_FAILED = "fetch_failed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_READY = "not_ready"
    GENERATION_FAILED = "generation_failed"
    INTERNAL_ERROR = "internal_error"
    QUEUE_FULL = "queue_full"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    SHUTTING_DOWN = "shutting_down"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    TOO_MANY_PARTS = "too_many_parts"
    JSON_TOO_DEEP = "json_too_deep"
    NOT_FINISHED = "not_finished"
    EXPIRED = "expired"
    STORE_BUSY = "store_busy"
    STORAGE_FULL = "storage_full"
    INVALID_LORA = "invalid_lora"
    LORA_MISMATCH = "lora_mismatch"
    # A job's own error codes for failures around its render (server/faults.py).
    INPUT_MISSING = "input_missing"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    START_TIMEOUT = "start_timeout"
    """The job was not started before the start deadline its client set (fal's X-Fal-Request-Timeout)."""


class ApiError(Exception):
    """A problem the client can act on. `message` must say what to change and hold no paths or traces."""

    def __init__(self, status: int, code: ErrorCode, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    def body(self) -> dict[str, dict[str, str | None]]:
        """The JSON body sent to the client."""
        return {"error": {"code": str(self.code), "message": self.message, "field": self.field}}
