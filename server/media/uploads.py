"""Files clients upload ahead of a request (Replicate's files API), referenced later by their URL.

Each file is `uploads/<id>.bin` with `uploads/<id>.json` beside it (name, content type, checksums, owner, expiry)
in the server's `Blobs` store (the data dir or the shared bucket). Ids are
random (130 bits), and a file is visible only to the key that uploaded it. Files expire like job inputs
(`retention_hours`); an expired file is gone to every reader and removed when next touched or swept.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from server.media.blobs import Blobs

_PREFIX = "uploads/"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_ID_LENGTH = 26


def _new_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(_ID_LENGTH))


def valid_id(file_id: str) -> bool:
    """Whether `file_id` has the shape of an id this store issues (nothing else is ever looked up)."""
    return len(file_id) == _ID_LENGTH and all(c in _ALPHABET for c in file_id)


@dataclass(frozen=True)
class UploadedFile:
    """One uploaded file's record."""

    id: str
    name: str
    content_type: str
    size: int
    sha256: str
    md5: str
    created_at: float
    expires_at: float | None
    owner: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class UploadStore:
    """Uploaded files, scoped to the API key that uploaded them."""

    def __init__(self, blobs: Blobs, retention_s: float | None) -> None:
        self.blobs = blobs
        self.retention_s = retention_s

    def create(self, data: bytes, name: str, content_type: str, owner: str | None,
               metadata: dict[str, Any] | None = None) -> UploadedFile:
        """Store `data` under a fresh id (the bytes first, then the record: a crash leaves no record without
        bytes)."""
        now = time.time()
        record = UploadedFile(id=_new_id(), name=name[:255], content_type=content_type[:255], size=len(data),
                              sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest(),
                              created_at=now, expires_at=now + self.retention_s if self.retention_s else None,
                              owner=owner, metadata=metadata or {})
        self.blobs.put(f"{_PREFIX}{record.id}.bin", data)
        self.blobs.put(f"{_PREFIX}{record.id}.json", json.dumps(asdict(record)).encode())
        return record

    def get(self, file_id: str, owner: str | None) -> UploadedFile | None:
        """The file's record when it exists, has not expired and belongs to `owner`; else None."""
        if not valid_id(file_id):
            return None
        try:
            raw = self.blobs.get(f"{_PREFIX}{file_id}.json")
            record = UploadedFile(**json.loads(raw or b""))
        except (OSError, ValueError, TypeError):
            return None
        if record.expires_at is not None and record.expires_at <= time.time():
            self._remove(file_id)
            return None
        return record if record.owner == owner else None

    def read(self, file_id: str, owner: str | None) -> bytes | None:
        """The file's bytes (same visibility rules as `get`)."""
        if self.get(file_id, owner) is None:
            return None
        return self.blobs.get(f"{_PREFIX}{file_id}.bin")

    def list(self, owner: str | None) -> list[UploadedFile]:
        """`owner`'s live files, newest first."""
        found = [self.get(_id_of(b.key), owner) for b in self.blobs.list(_PREFIX) if b.key.endswith(".json")]
        return sorted((f for f in found if f is not None), key=lambda f: f.created_at, reverse=True)

    def delete(self, file_id: str, owner: str | None) -> bool:
        """Remove `owner`'s file; False when there is none."""
        if self.get(file_id, owner) is None:
            return False
        self._remove(file_id)
        return True

    def sweep(self) -> int:
        """Remove every expired file; how many."""
        removed = 0
        now = time.time()
        for meta in [b for b in self.blobs.list(_PREFIX) if b.key.endswith(".json")]:
            try:
                expires = json.loads(self.blobs.get(meta.key) or b"").get("expires_at")
            except (OSError, ValueError, AttributeError):
                continue
            if expires is not None and expires <= now:
                self._remove(_id_of(meta.key))
                removed += 1
        return removed

    def _remove(self, file_id: str) -> None:
        for suffix in (".json", ".bin"):
            self.blobs.delete(f"{_PREFIX}{file_id}{suffix}")


def _id_of(key: str) -> str:
    return key.removeprefix(_PREFIX).rsplit(".", 1)[0]
