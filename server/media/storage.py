"""Files darkroom writes: normalised inputs of accepted jobs and generated outputs (images, clips).

Output names are random (192 bits) and are the only names the file route will
serve. Every write goes to a temporary file, is fsynced, then renamed, so a
crash never leaves a half-written file under a real name.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from server.media.video import encode_mp4

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}
_EXT = {"png": "png", "jpeg": "jpg", "webp": "webp", "mp4": "mp4"}
_NAME = re.compile(r"^[A-Za-z0-9_-]{32}\.(png|jpg|webp|mp4)$")
_BY_EXT = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file, or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
    """Generated images under `<data_dir>/files`."""

    def __init__(self, root: Path, png_compress_level: int = 1) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.png_compress_level = png_compress_level

    def save(self, image: Image.Image, fmt: str) -> StoredImage:
        """Encode and store one image under a fresh unguessable name."""
        data = encode(image, fmt, self.png_compress_level)
        name = f"{secrets.token_urlsafe(24)}.{_EXT[fmt]}"
        atomic_write(self.root / name, data)
        return StoredImage(name, image.width, image.height, CONTENT_TYPES[fmt], len(data))

    def save_video(self, frames: np.ndarray, fps: float, audio: np.ndarray | None, sample_rate: int) -> StoredVideo:
        """Encode one clip to MP4 and store it, with a PNG poster of its first frame."""
        data = encode_mp4(frames, fps, audio, sample_rate)
        name = f"{secrets.token_urlsafe(24)}.mp4"
        atomic_write(self.root / name, data)
        poster = self.save(Image.fromarray(frames[0]), "png")
        return StoredVideo(name, int(frames.shape[2]), int(frames.shape[1]), len(frames), fps,
                           audio is not None, len(data), poster)

    def open_path(self, name: str) -> tuple[Path, str] | None:
        """(path, content type) for a name this store generated; None for anything else.

        Only the generated-name shape is accepted, so no traversal is possible,
        and a symlink planted in the folder is not followed.
        """
        if not _NAME.fullmatch(name):
            return None
        path = self.root / name
        try:
            if path.is_symlink() or not path.is_file():
                return None
        except OSError:
            return None
        return path, _BY_EXT[name.rsplit(".", 1)[1]]

    def remove(self, names: list[str]) -> None:
        """Delete generated files (a result that arrived too late to be kept, a deleted task)."""
        for name in names:
            if _NAME.fullmatch(name):
                (self.root / name).unlink(missing_ok=True)

    def expire(self, names: list[str]) -> int:
        """Delete files whose time is up, leaving a tombstone so their URLs answer 410 rather than 404; the bytes
        freed."""
        tombs = self.root / ".expired"
        tombs.mkdir(exist_ok=True)
        freed = 0
        for name in names:
            if not _NAME.fullmatch(name):
                continue
            path = self.root / name
            try:
                freed += path.stat().st_size
                path.unlink()
            except OSError:
                continue
            (tombs / name).touch()
        return freed

    def expired(self, name: str) -> bool:
        """Whether `name` was a file of this store that has expired."""
        return bool(_NAME.fullmatch(name)) and (self.root / ".expired" / name).exists()

    def forget_expired(self, older_than: float) -> int:
        """Drop tombstones made before `older_than` (their URLs answer 404 from then on); how many."""
        tombs = self.root / ".expired"
        dropped = 0
        if tombs.is_dir():
            for path in tombs.iterdir():
                try:
                    if path.stat().st_mtime < older_than:
                        path.unlink()
                        dropped += 1
                except OSError:
                    continue
        return dropped

    def total_bytes(self) -> int:
        """Bytes of every stored file (what a size cap counts)."""
        return _tree_bytes(self.root)


class InputStore:
    """Normalised copies of accepted jobs' input images under `<data_dir>/inputs/<job id>/`.

    A job records its inputs by reference (`<job id>/<role>-<n>.png`), which `read` resolves; workers get the
    bytes, so they need not share this filesystem.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, job_id: str, role: str, index: int, image: Image.Image) -> str:
        """Store one input losslessly; returns the reference the job records."""
        folder = self.root / job_id
        folder.mkdir(exist_ok=True)
        name = f"{role}-{index}.png"
        atomic_write(folder / name, encode(image, "png", 1))
        return f"{job_id}/{name}"

    def read(self, ref: str) -> bytes:
        """The bytes behind a reference `save` returned (rows of earlier releases hold absolute paths)."""
        path = Path(ref) if Path(ref).is_absolute() else self.root / ref
        return path.read_bytes()

    def discard(self, job_id: str) -> int:
        """Remove a job's inputs (refused after they were written, deleted, or expired); the bytes freed."""
        folder = self.root / job_id
        if not folder.is_dir() or folder.is_symlink():
            return 0
        freed = _tree_bytes(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return freed

    def total_bytes(self) -> int:
        """Bytes of every stored input."""
        return _tree_bytes(self.root)


def _tree_bytes(root: Path) -> int:
    """Bytes of the regular files under `root` (links not followed; files vanishing meanwhile skipped)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total
