"""The LoRA library: adapters a key uploaded, the operator's mounted folder, and adapters fetched from URLs.

Files are content-addressed (`loras/files/<sha256>.safetensors` in the server's `Blobs`: the data dir or the shared
bucket, so every front end and the engine read the same bytes); an upload's record (`loras/keys/<owner>/<id>.json`)
is visible only to the key that made it, like uploads and history. The mounted folder (DARKROOM_LORA_DIR) is
read-only and visible to every key: its adapters are named by file name without `.safetensors`. A URL adapter is
fetched once through the SSRF guard and kept by content hash (`loras/urls/<sha256 of the URL>.json` remembers
which). Every file is checked from its header before it is kept (pipelines/lora_format.py): pickles refused,
truncation caught, the family it was trained for found from its layers.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.lora_format import FamilyLayers, LoraFormatError, denoiser_layers, inspect
from pipelines.registry import family_class
from server.media.blobs import Blobs
from weights.locate import LocatedWeights

_FILES = "loras/files/"
_KEYS = "loras/keys/"
_URLS = "loras/urls/"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
UPLOAD_PREFIX = "lora_"
_UPLOAD_ID = re.compile(r"^lora_[a-z0-9]{24}$")
_FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class LoraRecord:
    """One adapter as the API shows it."""

    id: str
    name: str
    sha256: str
    size: int
    rank: int
    layout: str
    families: tuple[str, ...]
    """Families whose weights its layers fit (empty: none that this server serves)."""
    source: str
    """'upload', 'folder' or 'url'."""
    created_at: float
    url: str | None = None
    encoder_layers: int = 0
    owner: str | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        """The JSON answer (never the owner)."""
        out = asdict(self)
        out.pop("owner")
        out["families"] = list(self.families)
        out["family"] = self.families[0] if self.families else None
        return out


def _owner_dir(owner: str | None) -> str:
    return hashlib.sha256((owner or "").encode()).hexdigest()[:24]


class LoraLibrary:
    """Where adapters come from and where their bytes are read back (by the engine, by content hash)."""

    def __init__(self, blobs: Blobs, folder: Path | None, max_bytes: int,
                 layers: Callable[[], Mapping[str, FamilyLayers]]) -> None:
        self.blobs = blobs
        self.folder = folder
        self.max_bytes = max_bytes
        self._layers = layers
        self._folder_index: dict[str, tuple[float, int, LoraRecord]] = {}
        self._by_sha: dict[str, Path] = {}
        self._lock = threading.Lock()

    # ---- checking -------------------------------------------------------------------------------------------
    def describe(self, data: bytes, name: str, source: str, owner: str | None = None, url: str | None = None,
                 lora_id: str | None = None) -> LoraRecord:
        """A record for `data` after checking it (LoraFormatError: not a usable LoRA; OverflowError: too large)."""
        if len(data) > self.max_bytes:
            raise OverflowError(f"the file is {len(data) / 1e6:.1f} MB; the limit is {self.max_bytes / 1e6:.0f} MB "
                                "(DARKROOM_MAX_LORA_MB)")
        header = inspect(data)
        fits = tuple(sorted(f for f, layers in self._layers().items() if not layers.misfits(header)))
        sha = hashlib.sha256(data).hexdigest()
        return LoraRecord(id=lora_id or UPLOAD_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(24)),
                          name=name[:200], sha256=sha, size=len(data), rank=header.rank, layout=header.layout,
                          families=fits, source=source, created_at=time.time(), url=url,
                          encoder_layers=header.encoder_layers, owner=owner)

    def known_families(self) -> frozenset[str]:
        """Families whose weights this process can read the layers of."""
        return frozenset(self._layers())

    def misfit_reason(self, record: LoraRecord, family: str) -> list[str]:
        """Why `record` does not fit `family` (empty: it does, or the weights cannot be read here to tell)."""
        layers = self._layers().get(family)
        if layers is None or family in record.families:
            return []
        data = self.read(record.sha256)
        return layers.misfits(inspect(data)) if data is not None else []

    # ---- uploads ---------------------------------------------------------------------------------------------
    def add(self, data: bytes, name: str, owner: str | None) -> LoraRecord:
        """Keep an uploaded adapter for `owner` (bytes first, then the record)."""
        record = self.describe(data, name, "upload", owner)
        self._put_file(record.sha256, data)
        self.blobs.put(f"{_KEYS}{_owner_dir(owner)}/{record.id}.json", json.dumps(asdict(record)).encode())
        return record

    def _put_file(self, sha: str, data: bytes) -> None:
        if self.blobs.size(f"{_FILES}{sha}.safetensors") != len(data):
            self.blobs.put(f"{_FILES}{sha}.safetensors", data)

    def list(self, owner: str | None) -> list[LoraRecord]:
        """`owner`'s uploads (newest first), then the mounted folder's adapters by name."""
        own = []
        for blob in self.blobs.list(f"{_KEYS}{_owner_dir(owner)}/"):
            record = self._record(blob.key)
            if record is not None and record.owner == owner:
                own.append(record)
        own.sort(key=lambda r: r.created_at, reverse=True)
        return own + self.folder_records()

    def get(self, lora_id: str, owner: str | None) -> LoraRecord | None:
        """An adapter `owner` may use: its own upload, or one in the mounted folder (ValueError: not an id)."""
        if _UPLOAD_ID.match(lora_id):
            record = self._record(f"{_KEYS}{_owner_dir(owner)}/{lora_id}.json")
            return record if record is not None and record.owner == owner else None
        if not _FOLDER_NAME.match(lora_id) or ".." in lora_id:
            raise ValueError("a LoRA id is an uploaded adapter's id (lora_...) or a file name in the server's LoRA "
                             "folder (letters, digits, '.', '_', '-'; no paths)")
        return self._folder_record(lora_id)

    def delete(self, lora_id: str, owner: str | None) -> bool:
        """Remove `owner`'s upload (its bytes too when no other record uses them); False when there is none."""
        if not _UPLOAD_ID.match(lora_id):
            return False
        key = f"{_KEYS}{_owner_dir(owner)}/{lora_id}.json"
        record = self._record(key)
        if record is None or record.owner != owner:
            return False
        self.blobs.delete(key)
        still_used = any(r is not None and r.sha256 == record.sha256
                         for b in self.blobs.list(_KEYS) if (r := self._record(b.key)) is not None)
        if not still_used and not self._url_uses(record.sha256):
            self.blobs.delete(f"{_FILES}{record.sha256}.safetensors")
        return True

    def _url_uses(self, sha: str) -> bool:
        return any((r := self._record(b.key)) is not None and r.sha256 == sha for b in self.blobs.list(_URLS))

    def _record(self, key: str) -> LoraRecord | None:
        try:
            raw = json.loads(self.blobs.get(key) or b"")
            raw["families"] = tuple(raw.get("families", ()))
            return LoraRecord(**raw)
        except (OSError, ValueError, TypeError):
            return None

    # ---- the mounted folder ------------------------------------------------------------------------------------
    def folder_records(self) -> list[LoraRecord]:
        """Every adapter in the mounted folder (checked once per file version; unusable files skipped)."""
        if self.folder is None or not self.folder.is_dir():
            return []
        out = []
        for path in sorted(self.folder.glob("*.safetensors")):
            record = self._folder_record(path.stem)
            if record is not None:
                out.append(record)
        return out

    def _folder_record(self, name: str) -> LoraRecord | None:
        if self.folder is None:
            return None
        path = self.folder / f"{name}.safetensors"
        try:
            if path.resolve().parent != self.folder.resolve() or not path.is_file():
                return None
            stat = path.stat()
        except OSError:
            return None
        with self._lock:
            cached = self._folder_index.get(name)
        if cached is not None and cached[:2] == (stat.st_mtime, stat.st_size):
            return cached[2]
        try:
            record = self.describe(path.read_bytes(), name, "folder", lora_id=name)
        except (LoraFormatError, OverflowError, OSError):
            return None
        with self._lock:
            self._folder_index[name] = (stat.st_mtime, stat.st_size, record)
            self._by_sha[record.sha256] = path
        return record

    # ---- URLs ------------------------------------------------------------------------------------------------
    def url_record(self, url: str) -> LoraRecord | None:
        """The adapter fetched from `url` before, if its bytes are still kept."""
        record = self._record(f"{_URLS}{hashlib.sha256(url.encode()).hexdigest()}.json")
        if record is None or self.blobs.size(f"{_FILES}{record.sha256}.safetensors") is None:
            return None
        return record

    def add_url(self, url: str, data: bytes, remember: bool = True) -> LoraRecord:
        """Keep an adapter fetched from `url` by content hash; `remember` also records which URL it came from, so
        the next request naming the URL does not fetch it again."""
        name = url.rsplit("/", 1)[-1].split("?", 1)[0] or "adapter"
        record = self.describe(data, name, "url", url=url, lora_id=f"url:{hashlib.sha256(url.encode()).hexdigest()[:16]}")
        self._put_file(record.sha256, data)
        if remember:
            self.blobs.put(f"{_URLS}{hashlib.sha256(url.encode()).hexdigest()}.json",
                           json.dumps(asdict(record)).encode())
        return record

    # ---- bytes, for the engine ---------------------------------------------------------------------------------
    def read(self, sha256: str) -> bytes | None:
        """The adapter file with this content hash (uploads, URL adapters, then the mounted folder)."""
        data = self.blobs.get(f"{_FILES}{sha256}.safetensors")
        if data is not None:
            return data
        with self._lock:
            path = self._by_sha.get(sha256)
        if path is None:
            self.folder_records()
            with self._lock:
                path = self._by_sha.get(sha256)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None


def served_family_layers(located: Mapping[str, LocatedWeights]) -> Callable[[], Mapping[str, FamilyLayers]]:
    """The adaptable layers of each served family that takes LoRAs, read from its weights' headers on first use
    (weights a Ray cluster holds on its nodes are not readable here: those families are checked by the worker)."""
    found: list[dict[str, FamilyLayers]] = []
    lock = threading.Lock()

    def layers() -> Mapping[str, FamilyLayers]:
        with lock:
            if not found:
                out: dict[str, FamilyLayers] = {}
                for where in located.values():
                    fam = family_class(where.entry.family)
                    if fam.takes_loras and where.path.is_dir():
                        out[fam.name] = denoiser_layers(fam.name, where.path, fam.denoisers, fam.lora_layouts)
                found.append(out)
            return found[0]

    return layers
