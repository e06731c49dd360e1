"""Where files live, one contract for both stores: the data dir, and an S3 bucket on a real S3-compatible server
(moto's server mode on loopback). Outputs, inputs, uploads, expiry tombstones and byte ranges work the same on
either; names the stores did not make are never looked up."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from server.media.blobs import Blobs, LocalBlobs, S3Blobs
from server.media.storage import InputStore, OutputStore
from server.media.uploads import UploadStore


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blobs]:
    if request.param == "local":
        yield LocalBlobs(tmp_path)
        return
    server: Any = request.getfixturevalue("s3_server")
    yield S3Blobs.connect(server.url, f"b-{secrets.token_hex(4)}", prefix="studio", create=True)


def test_put_get_list_delete(blobs: Blobs) -> None:
    blobs.put("inputs/j1/source-0.png", b"abc")
    blobs.put("inputs/j1/mask-0.png", b"defg")
    blobs.put("inputs/j2/source-0.png", b"h")
    assert blobs.get("inputs/j1/source-0.png") == b"abc" and blobs.get("inputs/nope") is None
    assert blobs.size("inputs/j1/mask-0.png") == 4 and blobs.size("nope") is None
    assert sorted(b.key for b in blobs.list("inputs/j1/")) == ["inputs/j1/mask-0.png", "inputs/j1/source-0.png"]
    assert blobs.total_bytes("inputs/") == 8
    assert blobs.delete_prefix("inputs/j1/") == 7 and [b.key for b in blobs.list("inputs/")] == ["inputs/j2/source-0.png"]
    assert blobs.delete("inputs/j2/source-0.png") == 1 and blobs.delete("inputs/j2/source-0.png") == 0


def test_byte_ranges(blobs: Blobs) -> None:
    blobs.put("files/x", bytes(range(100)))
    whole = blobs.stream("files/x")
    assert whole is not None and b"".join(whole.chunks) == bytes(range(100)) and whole.total == 100
    part = blobs.stream("files/x", (10, 19))
    assert part is not None and b"".join(part.chunks) == bytes(range(10, 20))
    assert part.length == 10 and part.content_range == "bytes 10-19/100"
    tail = blobs.stream("files/x", (90, None))
    assert tail is not None and b"".join(tail.chunks) == bytes(range(90, 100))
    assert blobs.stream("files/x", (500, None)) is None and blobs.stream("files/none") is None


def test_output_and_input_stores_on_either(blobs: Blobs) -> None:
    outputs, inputs = OutputStore(blobs), InputStore(blobs)
    saved = outputs.save(Image.new("RGB", (8, 6), (1, 2, 3)), "png")
    assert outputs.content_type(saved.name) == "image/png" and outputs.size(saved.name) == saved.bytes
    assert Image.open(__import__("io").BytesIO(outputs.read(saved.name))).size == (8, 6)  # type: ignore[arg-type]
    # Only names of the generated shape are looked up: no traversal, no other keys.
    for bad in ("../inputs/x.png", "x.png", saved.name + "/", "A" * 32 + ".exe"):
        assert outputs.content_type(bad) is None and outputs.read(bad) is None
    ref = inputs.save("task_1_ab", "source", 0, Image.new("RGB", (4, 4)))
    assert ref == "task_1_ab/source-0.png" and inputs.read(ref)[:8] == b"\x89PNG\r\n\x1a\n"
    assert outputs.total_bytes() == saved.bytes and inputs.total_bytes() > 0
    assert outputs.expire([saved.name]) == saved.bytes
    assert outputs.read(saved.name) is None and outputs.expired(saved.name) and outputs.total_bytes() == 0
    assert inputs.discard("task_1_ab") > 0 and inputs.total_bytes() == 0
    with pytest.raises(FileNotFoundError):
        inputs.read(ref)


def test_uploads_on_either(blobs: Blobs) -> None:
    uploads = UploadStore(blobs, retention_s=60.0)
    made = uploads.create(b"bytes", "a.png", "image/png", owner="studio")
    assert uploads.read(made.id, "studio") == b"bytes" and uploads.read(made.id, "other") is None
    assert [f.id for f in uploads.list("studio")] == [made.id] and uploads.list(None) == []
    assert uploads.delete(made.id, "studio") and uploads.get(made.id, "studio") is None
