"""Where darkroom's files live: a key -> bytes interface with two implementations, a local directory (the
single-machine default) and an S3-compatible object store (several front ends and remote workers sharing one).

Keys are relative, '/'-separated and shaped by the stores above this one (output names, job ids), which alone
decide what a key may look like. Writes are whole objects: a reader sees the old object or the new one, never a
part (a local write goes to a temporary file, is fsynced, then renamed; an S3 PUT is atomic by itself).
"""

from __future__ import annotations

import os
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.faults import StorageFull, is_disk_full


@dataclass(frozen=True)
class BlobInfo:
    """One stored object: its key, size and last-modified time (epoch seconds)."""

    key: str
    size: int
    modified: float


@dataclass(frozen=True)
class BlobStream:
    """A stored object (or a byte range of it) to send: chunks, the bytes sent, the object's size, and the
    Content-Range when a range was asked for."""

    chunks: Iterator[bytes]
    length: int
    total: int
    content_range: str | None = None


class Blobs(ABC):
    """Objects by key."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` (replacing what was there)."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size, or None when there is none."""

    @abstractmethod
    def delete(self, key: str) -> int:
        """Remove the object; the bytes freed (0 when there was none)."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Every object whose key starts with `prefix`."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under `prefix`; the bytes freed."""
        return sum(self.delete(b.key) for b in list(self.list(prefix)))

    def total_bytes(self, prefix: str) -> int:
        """Bytes stored under `prefix`."""
        return sum(b.size for b in self.list(prefix))

    def local_path(self, key: str) -> Path | None:
        """A file on this machine holding the object, for zero-copy sends (None for remote stores)."""
        return None

    def free_bytes(self) -> int | None:
        """Space left for new objects, where the store can tell (None: a bucket, unknown)."""
        return None

    @abstractmethod
    def stream(self, key: str, byte_range: tuple[int, int | None] | None = None) -> BlobStream | None:
        """The object (or the inclusive byte range [start, end]) as chunks; None when there is none or the range
        starts past its end."""


class LocalBlobs(Blobs):
    """Objects as files under `root` (keys are paths below it; links are never followed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key

    def free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # a full disk leaves nothing half-written behind
            if is_disk_full(exc):
                raise StorageFull("files") from exc
            raise

    def get(self, key: str) -> bytes | None:
        path = self.local_path(key)
        try:
            return path.read_bytes() if path else None
        except OSError:
            return None

    def size(self, key: str) -> int | None:
        path = self.local_path(key)
        try:
            return path.stat().st_size if path else None
        except OSError:
            return None

    def delete(self, key: str) -> int:
        path = self._path(key)
        try:
            size = path.lstat().st_size
            path.unlink()
        except OSError:
            return 0
        return size

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        # Walk only the folder the prefix names (inputs/<job>/ rather than the whole tree).
        folder = prefix.rpartition("/")[0]
        base = self._path(folder) if folder else self.root
        if not base.is_dir() or base.is_symlink():
            return
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not Path(dirpath, d).is_symlink()]
            for name in files:
                full = Path(dirpath, name)
                key = full.relative_to(self.root).as_posix()
                if not key.startswith(prefix) or name.endswith(".tmp"):
                    continue
                try:
                    st = full.lstat()
                except OSError:
                    continue
                yield BlobInfo(key, st.st_size, st.st_mtime)

    def delete_prefix(self, prefix: str) -> int:
        freed = super().delete_prefix(prefix)
        # Remove the emptied folder (inputs/<job id>/), if the prefix named one.
        folder = self._path(prefix.rstrip("/"))
        if prefix.endswith("/") and folder.is_dir() and not folder.is_symlink():
            try:
                folder.rmdir()
            except OSError:
                pass
        return freed

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        try:
            return path if path.is_file() and not path.is_symlink() else None
        except OSError:
            return None

    def stream(self, key: str, byte_range: tuple[int, int | None] | None = None) -> BlobStream | None:
        path = self.local_path(key)
        if path is None:
            return None
        total = path.stat().st_size
        start, end = _clamp(byte_range, total)
        if start >= total and total:
            return None

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as fh:
                fh.seek(start)
                left = end - start + 1
                while left > 0:
                    chunk = fh.read(min(left, 1 << 20))
                    if not chunk:
                        return
                    left -= len(chunk)
                    yield chunk

        return BlobStream(chunks(), end - start + 1 if total else 0, total,
                          f"bytes {start}-{end}/{total}" if byte_range else None)


class S3Blobs(Blobs):
    """Objects in an S3-compatible bucket (AWS S3, MinIO, Ceph, moto...), under an optional key prefix."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @classmethod
    def connect(cls, endpoint_url: str | None, bucket: str, prefix: str = "", region: str | None = None,
                create: bool = False) -> S3Blobs:
        """A store on `bucket` (credentials from the usual AWS environment variables or files); `create` makes
        the bucket when it does not exist."""
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region or "us-east-1",
                              config=Config(retries={"max_attempts": 5, "mode": "standard"},
                                            s3={"addressing_style": "path"}))
        if create:
            from botocore.exceptions import ClientError

            try:
                client.head_bucket(Bucket=bucket)
            except ClientError:
                client.create_bucket(Bucket=bucket)
        return cls(client, bucket, prefix)

    def _key(self, key: str) -> str:
        return self.prefix + key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def delete(self, key: str) -> int:
        size = self.size(key)
        if size is None:
            return 0
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        return size

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        for page in pages:
            for obj in page.get("Contents", []):
                yield BlobInfo(obj["Key"][len(self.prefix):], int(obj["Size"]), obj["LastModified"].timestamp())

    def delete_prefix(self, prefix: str) -> int:
        found = list(self.list(prefix))
        for i in range(0, len(found), 1000):  # DeleteObjects takes at most 1000 keys
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self._key(b.key)} for b in found[i:i + 1000]], "Quiet": True})
        return sum(b.size for b in found)

    def stream(self, key: str, byte_range: tuple[int, int | None] | None = None) -> BlobStream | None:
        from botocore.exceptions import ClientError

        extra = {}
        if byte_range is not None:
            start, end = byte_range
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except ClientError as exc:
            if _missing(exc) or exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return None
            raise
        length = int(obj["ContentLength"])
        content_range = obj.get("ContentRange")
        total = int(content_range.rsplit("/", 1)[1]) if content_range else length
        return BlobStream(obj["Body"].iter_chunks(1 << 20), length, total, content_range)


def _missing(exc: Any) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


def _clamp(byte_range: tuple[int, int | None] | None, total: int) -> tuple[int, int]:
    if byte_range is None:
        return 0, max(total - 1, 0)
    start, end = byte_range
    return start, min(end if end is not None else total - 1, total - 1)
