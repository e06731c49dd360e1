"""API-key check for every route but /health, as pure ASGI middleware (it also guards 404s and /files)."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/health"})


# Every provider's way of sending a key: OpenAI/Replicate/native `Authorization: Bearer`, fal `Authorization: Key`,
# Replicate's older `Authorization: Token`, native `X-API-Key`, Black Forest Labs `x-key`, Gemini `x-goog-api-key`.
KEY_HEADERS = (b"x-api-key", b"x-key", b"x-goog-api-key")
AUTH_SCHEMES = (b"bearer", b"key", b"token")


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key from any of the providers' headers, if any."""
    for name, value in headers:
        lname = name.lower()
        if lname in KEY_HEADERS:
            return value.strip()
        if lname == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() in AUTH_SCHEMES and token:
                return token.strip()
    return None


class ApiKeyMiddleware:
    """Rejects requests without the configured key with 401 and the standard error body."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        key = presented_key(scope["headers"])
        # compare_digest: the time taken does not reveal how much of the key matched.
        if key is not None and hmac.compare_digest(key, self.key):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": {
            "code": "unauthorized",
            "message": "missing or wrong API key: send Authorization: Bearer <key> (or Key/Token), X-API-Key, x-key "
                       "or x-goog-api-key",
            "field": None,
        }}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="darkroom"'),
        ]})
        await send({"type": "http.response.body", "body": body})
