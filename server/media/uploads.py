"""Files clients upload ahead of a request (Replicate's files API), referenced later by their URL.

Each file is `<root>/<id>.bin` with `<id>.json` beside it (name, content type, checksums, owner, expiry). Ids are
random (130 bits), and a file is visible only to the key that uploaded it. Files expire like job inputs
(`retention_hours`); an expired file is gone to every reader and removed when next touched or swept.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from server.media.storage import atomic_write

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
    """Uploaded files under `root`, scoped to the API key that uploaded them."""

    def __init__(self, root: Path, retention_s: float | None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_s

    def create(self, data: bytes, name: str, content_type: str, owner: str | None,
               metadata: dict[str, Any] | None = None) -> UploadedFile:
        """Store `data` under a fresh id (the bytes first, then the record: a crash leaves no record without
        bytes)."""
        now = time.time()
        record = UploadedFile(id=_new_id(), name=name[:255], content_type=content_type[:255], size=len(data),
                              sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest(),  # noqa: S324
                              created_at=now, expires_at=now + self.retention_s if self.retention_s else None,
                              owner=owner, metadata=metadata or {})
        atomic_write(self.root / f"{record.id}.bin", data)
        atomic_write(self.root / f"{record.id}.json", json.dumps(asdict(record)).encode())
        return record

    def get(self, file_id: str, owner: str | None) -> UploadedFile | None:
        """The file's record when it exists, has not expired and belongs to `owner`; else None."""
        if not valid_id(file_id):
            return None
        try:
            record = UploadedFile(**json.loads((self.root / f"{file_id}.json").read_text()))
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
        try:
            return (self.root / f"{file_id}.bin").read_bytes()
        except OSError:
            return None

    def list(self, owner: str | None) -> list[UploadedFile]:
        """`owner`'s live files, newest first."""
        found = [self.get(p.stem, owner) for p in self.root.glob("*.json")]
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
        for meta in self.root.glob("*.json"):
            try:
                expires = json.loads(meta.read_text()).get("expires_at")
            except (OSError, ValueError):
                continue
            if expires is not None and expires <= now:
                self._remove(meta.stem)
                removed += 1
        return removed

    def _remove(self, file_id: str) -> None:
        for suffix in (".json", ".bin"):
            (self.root / f"{file_id}{suffix}").unlink(missing_ok=True)
