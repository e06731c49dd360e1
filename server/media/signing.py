"""Capability URLs for output files: `/files/<name>?exp=<unix>&sig=<hex>` works without an API key, like the
hosted providers' output URLs (an `<img src>`, a CDN, `requests.get(url)`, an SDK's file download), until the
files expire.

The signature is HMAC-SHA256 over the file's path and its expiry with a secret every front end on the job store
shares (created once, kept in the store), so a URL handed out by one front end works on all of them, nobody can
extend its expiry or point it at another file, and the names themselves stay unguessable (192 bits) as before.
`exp=0` means the files are kept until deleted (retention off).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from enum import Enum


class Verdict(Enum):
    """What a signed URL's query says."""

    VALID = "valid"
    EXPIRED = "expired"
    INVALID = "invalid"
    UNSIGNED = "unsigned"


class UrlSigner:
    """Signs and checks output file URLs with one secret."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def _mac(self, name: str, expires: int) -> str:
        return hmac.new(self._key, f"/files/{name}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def query(self, name: str, expires_at: float | None) -> str:
        """The query string that makes `/files/<name>` work without a key until `expires_at` (None: never)."""
        exp = int(expires_at) if expires_at else 0
        return f"exp={exp}&sig={self._mac(name, exp)}"

    def check(self, name: str, exp: str | None, sig: str | None, now: float | None = None) -> Verdict:
        """Whether the `exp` and `sig` of a request for `/files/<name>` let it through without a key."""
        if exp is None and sig is None:
            return Verdict.UNSIGNED
        if exp is None or sig is None or not exp.isdigit() or len(exp) > 12:
            return Verdict.INVALID
        if not hmac.compare_digest(sig, self._mac(name, int(exp))):
            return Verdict.INVALID
        expires = int(exp)
        if expires and expires < (time.time() if now is None else now):
            return Verdict.EXPIRED
        return Verdict.VALID
