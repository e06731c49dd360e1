"""Hypothesis on the decode path: any bytes, and valid images with bytes flipped, cut or spliced, either decode
to a bounded RGB image or raise ApiError with a 4xx and a stable code. Nothing else escapes, nothing echoes the
decoder's text."""

from __future__ import annotations

import io
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from server.errors import ApiError
from server.media.decode import decode_image

MAX_PIXELS, MAX_SIDE = 512 * 512, 1024
CODES = {"invalid_image", "image_too_large", "unsupported_media_type"}
LEAK = re.compile(r"0x[0-9a-fA-F]{6,}|BytesIO|Traceback|PIL")


def _seed(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    image = Image.new(mode, (23, 17), 120 if mode in ("L", "P") else (10, 200, 90))
    image.save(buf, fmt, **({"save_all": True, "append_images": [image]} if fmt == "GIF" else {}))
    return buf.getvalue()


SEEDS = [_seed("PNG"), _seed("JPEG"), _seed("WEBP"), _seed("GIF", "P"), _seed("PNG", "L")]


def _check(data: bytes) -> None:
    try:
        image = decode_image(data, "image_urls[0]", MAX_PIXELS, "RGB", MAX_SIDE)
    except ApiError as exc:
        assert 400 <= exc.status < 500 and str(exc.code) in CODES, (exc.status, exc.code)
        assert exc.field == "image_urls[0]" and not LEAK.search(exc.message)
        return
    assert image.mode == "RGB" and image.width * image.height <= MAX_PIXELS and max(image.size) <= MAX_SIDE


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                   max_size=8),
       cut=st.integers(0, 10_000), tail=st.binary(max_size=64))
def test_mutated_images(seed: bytes, edits: list[tuple[int, int]], cut: int, tail: bytes) -> None:
    data = bytearray(seed)
    for pos, value in edits:
        data[pos % len(data)] = value
    _check(bytes(data[: max(1, cut % (len(data) + 1))]) + tail)


@settings(max_examples=150, deadline=None)
@given(width=st.integers(1, 70_000), height=st.integers(1, 70_000), seed=st.sampled_from([0, 3]))
def test_declared_sizes_are_checked_before_decode(width: int, height: int, seed: int) -> None:
    """A PNG or GIF header may claim any size: big ones are refused from the header alone."""
    data = bytearray(SEEDS[seed])
    if seed == 0:  # PNG IHDR width/height at 16..24 (the CRC then fails for changed sizes: also a clean refusal)
        data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    else:  # GIF logical screen at 6..10
        data[6:10] = min(width, 65535).to_bytes(2, "little") + min(height, 65535).to_bytes(2, "little")
    _check(bytes(data))
