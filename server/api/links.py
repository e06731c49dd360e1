"""The URLs a response hands out for a task's files: on the base URL the client called (or the configured public
one), signed so they work without an API key until the files expire (server/media/signing.py), unless the
operator requires a key for files."""

from __future__ import annotations

from dataclasses import dataclass

from server.jobs.store import JobRecord
from server.media.signing import UrlSigner
from server.retention import files_expire_at


@dataclass(frozen=True)
class Links:
    """How one response writes file URLs."""

    base: str
    signer: UrlSigner | None
    """None: files need an API key (`DARKROOM_FILES_REQUIRE_KEY`), URLs are plain."""
    retention_s: float | None
    valid_s: float | None = None
    """URLs valid this many seconds from the task's end, for a provider whose URLs are short-lived (never past the
    files' own expiry); None: until the files expire."""

    def file(self, name: str, record: JobRecord) -> str:
        """The URL of output `name` of `record`, valid (signed) until the task's files expire (or `valid_s`)."""
        url = f"{self.base}/files/{name}"
        if self.signer is None:
            return url
        until = files_expire_at(record, self.retention_s)
        if self.valid_s is not None:
            short = (record.finished_at or record.created_at) + self.valid_s
            until = short if until is None else min(until, short)
        return f"{url}?{self.signer.query(name, until)}"
