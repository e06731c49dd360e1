"""Files darkroom writes: normalised inputs of accepted jobs and generated outputs (images, clips), kept in a
`Blobs` store (the data dir, or an S3-compatible bucket shared by several front ends).

Output names are random (192 bits) and are the only names the file route will serve. Writes are whole objects
(see server/media/blobs.py), so a crash never leaves a half-written file under a real name.
"""

from __future__ import annotations

import io
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from server.media.blobs import Blobs, BlobStream
from server.media.video import encode_mp4

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}
_EXT = {"png": "png", "jpeg": "jpg", "webp": "webp", "mp4": "mp4"}
_NAME = re.compile(r"^[A-Za-z0-9_-]{32}\.(png|jpg|webp|mp4)$")
_BY_EXT = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}
_FILES = "files/"
_TOMBS = "files/.expired/"
_INPUTS = "inputs/"
_PREVIEWS = "previews/"
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def encode(image: Image.Image, fmt: str, png_compress_level: int) -> bytes:
    """Encode deterministically (no timestamps in the metadata), so a seed reproduces the same bytes."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, "PNG", compress_level=png_compress_level)
    elif fmt == "jpeg":
        image.save(buf, "JPEG", quality=95)
    elif fmt == "webp":
        image.save(buf, "WEBP", quality=95, method=4)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return buf.getvalue()


@dataclass(frozen=True)
class StoredImage:
    """An output image on disk."""

    name: str
    width: int
    height: int
    content_type: str
    bytes: int


@dataclass(frozen=True)
class StoredVideo:
    """An output clip on disk and its poster image."""

    name: str
    width: int
    height: int
    num_frames: int
    fps: float
    has_audio: bool
    bytes: int
    poster: StoredImage


class OutputStore:
    """Generated images and clips, as `files/<name>` objects (the data dir's files/ folder, or a bucket)."""

    def __init__(self, blobs: Blobs, png_compress_level: int = 1) -> None:
        self.blobs = blobs
        self.png_compress_level = png_compress_level

    def save(self, image: Image.Image, fmt: str) -> StoredImage:
        """Encode and store one image under a fresh unguessable name."""
        data = encode(image, fmt, self.png_compress_level)
        name = f"{secrets.token_urlsafe(24)}.{_EXT[fmt]}"
        self.blobs.put(_FILES + name, data)
        return StoredImage(name, image.width, image.height, CONTENT_TYPES[fmt], len(data))

    def save_video(self, frames: np.ndarray, fps: float, audio: np.ndarray | None, sample_rate: int) -> StoredVideo:
        """Encode one clip to MP4 and store it, with a PNG poster of its first frame."""
        data = encode_mp4(frames, fps, audio, sample_rate)
        name = f"{secrets.token_urlsafe(24)}.mp4"
        self.blobs.put(_FILES + name, data)
        poster = self.save(Image.fromarray(frames[0]), "png")
        return StoredVideo(name, int(frames.shape[2]), int(frames.shape[1]), len(frames), fps,
                           audio is not None, len(data), poster)

    def probe(self) -> None:
        """Write and remove a small object: raises (StorageFull...) while outputs cannot be stored."""
        key = f"probe/{secrets.token_hex(8)}"
        self.blobs.put(key, b"\0" * 65536)
        self.blobs.delete(key)

    def content_type(self, name: str) -> str | None:
        """The content type of a name this store generates; None for any other name (nothing else is looked up,
        so no traversal is possible)."""
        return _BY_EXT[name.rsplit(".", 1)[1]] if _NAME.fullmatch(name) else None

    def read(self, name: str) -> bytes | None:
        """An output's bytes; None for an unknown or malformed name."""
        return self.blobs.get(_FILES + name) if self.content_type(name) else None

    def size(self, name: str) -> int | None:
        """An output's size in bytes; None when there is no such output."""
        return self.blobs.size(_FILES + name) if self.content_type(name) else None

    def local_path(self, name: str) -> Path | None:
        """The output as a file on this machine (local store only; a planted symlink is never followed)."""
        return self.blobs.local_path(_FILES + name) if self.content_type(name) else None

    def stream(self, name: str, byte_range: tuple[int, int | None] | None = None) -> BlobStream | None:
        """The output (or a byte range of it) as chunks, from wherever it is stored."""
        return self.blobs.stream(_FILES + name, byte_range) if self.content_type(name) else None

    def remove(self, names: list[str]) -> None:
        """Delete generated files (a result that arrived too late to be kept, a deleted task)."""
        for name in names:
            if self.content_type(name):
                self.blobs.delete(_FILES + name)

    def expire(self, names: list[str]) -> int:
        """Delete files whose time is up, leaving a tombstone so their URLs answer 410 rather than 404; the bytes
        freed."""
        freed = 0
        for name in names:
            if not self.content_type(name):
                continue
            gone = self.blobs.delete(_FILES + name)
            if gone:
                freed += gone
                self.blobs.put(_TOMBS + name, b"")
        return freed

    def expired(self, name: str) -> bool:
        """Whether `name` was a file of this store that has expired."""
        return bool(self.content_type(name)) and self.blobs.size(_TOMBS + name) is not None

    def forget_expired(self, older_than: float) -> int:
        """Drop tombstones made before `older_than` (their URLs answer 404 from then on); how many."""
        old = [b.key for b in self.blobs.list(_TOMBS) if b.modified < older_than]
        for key in old:
            self.blobs.delete(key)
        return len(old)

    def total_bytes(self) -> int:
        """Bytes of every stored output (what a size cap counts)."""
        return sum(b.size for b in self.blobs.list(_FILES) if not b.key.startswith(_TOMBS))


class InputStore:
    """Normalised copies of accepted jobs' input images, as `inputs/<job id>/<role>-<n>.png` objects.

    A job records its inputs by reference (`<job id>/<role>-<n>.png`), which `read` resolves; workers get the
    bytes, so they need not share this storage.
    """

    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs

    def save(self, job_id: str, role: str, index: int, image: Image.Image) -> str:
        """Store one input losslessly; returns the reference the job records."""
        ref = f"{job_id}/{role}-{index}.png"
        self.blobs.put(_INPUTS + ref, encode(image, "png", 1))
        return ref

    def read(self, ref: str) -> bytes:
        """The bytes behind a reference `save` returned (rows of earlier releases hold absolute paths)."""
        if Path(ref).is_absolute():
            return Path(ref).read_bytes()
        data = self.blobs.get(_INPUTS + ref)
        if data is None:
            raise FileNotFoundError(ref)
        return data

    def discard(self, job_id: str) -> int:
        """Remove a job's inputs (refused after they were written, deleted, or expired); the bytes freed."""
        return self.blobs.delete_prefix(f"{_INPUTS}{job_id}/")

    def total_bytes(self) -> int:
        """Bytes of every stored input."""
        return self.blobs.total_bytes(_INPUTS)


class PreviewStore:
    """The latest live preview of each running job that asked for them, as `previews/<job id>.jpg` objects (on the
    outputs' storage, so a front end shows what a remote worker's engine wrote). One small JPEG per job, replaced
    as the render goes on and removed when it ends."""

    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs

    @staticmethod
    def _key(job_id: str) -> str | None:
        return f"{_PREVIEWS}{job_id}.jpg" if _JOB_ID.fullmatch(job_id) else None

    def put(self, job_id: str, jpeg: bytes) -> None:
        """Replace the job's preview."""
        key = self._key(job_id)
        if key is not None:
            self.blobs.put(key, jpeg)

    def get(self, job_id: str) -> bytes | None:
        """The job's latest preview; None when it has none (yet, or any more)."""
        key = self._key(job_id)
        return self.blobs.get(key) if key is not None else None

    def remove(self, job_id: str) -> None:
        """Drop the job's preview (its render ended)."""
        key = self._key(job_id)
        if key is not None:
            self.blobs.delete(key)
