"""API-key check and per-key rate limit for every route but /health, as pure ASGI middleware (it also guards
404s and /files). The matched key's name is left in the scope for the routes (quota, Idempotency-Key scope)."""

from __future__ import annotations

import math
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api import docs
from server.api.dialect import ErrorShaper
from server.api.errors import send_error
from server.errors import ApiError, ErrorCode
from server.keys import KeyRing, RateLimiter
from server.media.signing import UrlSigner, Verdict
from server.studio import routes as studio

OPEN_PATHS = frozenset({"/health"}) | docs.OPEN_PATHS | studio.OPEN_PATHS
FILES_PREFIX = "/files/"
OPEN_PREFIXES = (docs.ASSETS_PREFIX, studio.PREFIX)
SCOPE_KEY = "darkroom.key"

def presented_key(headers: list[tuple[bytes, bytes]], key_headers: tuple[str, ...],
                  schemes: tuple[str, ...]) -> bytes | None:
    """The key from any of the dialects' headers (lower-case names; see server/api/registry.py), if any."""
    whole = {h.encode() for h in key_headers}
    allowed = {s.encode() for s in schemes}
    for name, value in headers:
        lname = name.lower()
        if lname in whole:
            return value.strip()
        if lname == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() in allowed and token:
                return token.strip()
    return None


def file_verdict(signer: UrlSigner, scope: Scope) -> Verdict:
    """What the `exp` and `sig` query parameters of a request for /files/<name> say."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    name = scope["path"][len(FILES_PREFIX):]
    return signer.check(name, (query.get("exp") or [None])[0], (query.get("sig") or [None])[0])


def caller(scope: Scope) -> str | None:
    """Name of the key that authenticated this request (None when auth is off)."""
    return scope.get(SCOPE_KEY)


UNAUTHORIZED = ApiError(401, ErrorCode.UNAUTHORIZED, "missing or wrong API key: send Authorization: Bearer <key> "
                         "(or Key/Token), X-API-Key, x-key or x-goog-api-key", None,
                         headers={"WWW-Authenticate": 'Bearer realm="darkroom"'})


class ApiKeyMiddleware:
    """401 without a known key; 429 rate_limited (with Retry-After) past the key's requests per minute."""

    def __init__(self, app: ASGIApp, keys: KeyRing, shaper: ErrorShaper, key_headers: tuple[str, ...],
                 schemes: tuple[str, ...], signer: UrlSigner | None = None,
                 open_paths: set[str] | frozenset[str] = frozenset()) -> None:
        self.app = app
        self.key_headers = key_headers
        self.schemes = schemes
        """Where the dialects' clients send the key (derived from the registered dialects)."""
        self.open_paths = OPEN_PATHS | open_paths
        """Paths served without a key: /health, the docs and the studio's page, and those the settings open
        (/metrics with DARKROOM_METRICS_PUBLIC)."""
        self.keys = keys
        self.shaper = shaper
        self.limiter = RateLimiter()
        self.signer = signer
        """Lets signed output URLs through without a key (None: files need a key too)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or scope["path"].startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.signer is not None and scope["path"].startswith(FILES_PREFIX) and \
                file_verdict(self.signer, scope) in (Verdict.VALID, Verdict.EXPIRED):
            # A capability URL: the route serves it (or answers 410 once it has expired), whoever asks.
            await self.app(scope, receive, send)
            return
        key = self.keys.match(presented_key(scope["headers"], self.key_headers, self.schemes))
        if key is None:
            await send_error(send, UNAUTHORIZED, scope["path"], self.shaper)
            return
        wait_s = self.limiter.take(key)
        if wait_s > 0:
            retry = max(1, math.ceil(wait_s))
            await send_error(send, ApiError(429, ErrorCode.RATE_LIMITED, f"key {key.name!r} is limited to "
                                            f"{key.rate_per_minute} requests per minute; retry in {retry} s", None,
                                            headers={"Retry-After": str(retry)}), scope["path"], self.shaper)
            return
        scope[SCOPE_KEY] = key.name
        await self.app(scope, receive, send)
