"""Image decoding: formats, limits, normalisation, and no decoder text in errors."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from server.errors import ApiError
from server.media.decode import decode_image
from server.media.fetch import decode_data_url

MAX = 4096 * 4096


def _enc(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "1"])
def test_modes_normalise_to_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image(_enc(Image.new(mode, (10, 7)), fmt), "f", MAX)
    assert out.mode == "RGB" and out.size == (10, 7)


def test_alpha_is_flattened_on_white() -> None:
    out = decode_image(_enc(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG"), "f", MAX)
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    data = _enc(Image.new("RGB", (40, 20)), "JPEG", exif=exif.tobytes())
    assert decode_image(data, "f", MAX).size == (20, 40)


def test_pixel_cap_checked_before_decode() -> None:
    with pytest.raises(ApiError) as exc:
        decode_image(_enc(Image.new("L", (300, 300)), "PNG"), "f", 300 * 299)
    assert exc.value.code == "image_too_large" and exc.value.status == 413


@pytest.mark.parametrize(("data", "code"), [
    (b"", "invalid_image"),
    (b"hello, not an image", "invalid_image"),
    (_enc(Image.new("RGB", (50, 50)), "PNG")[:60], "invalid_image"),
    (_enc(Image.new("RGB", (5, 5)), "BMP"), "unsupported_media_type"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "invalid_image"),
])
def test_rejections(data: bytes, code: str) -> None:
    with pytest.raises(ApiError) as exc:
        decode_image(data, "image_urls[0]", MAX)
    assert exc.value.code == code and exc.value.field == "image_urls[0]"
    assert "0x" not in exc.value.message


def test_gif_first_frame() -> None:
    frames = [Image.new("P", (8, 8), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buf.getvalue(), "f", MAX).size == (8, 8)


def test_masks_decode_to_l() -> None:
    assert decode_image(_enc(Image.new("RGB", (6, 6), (255, 255, 255)), "PNG"), "m", MAX, mode="L").mode == "L"


def test_data_urls() -> None:
    assert decode_data_url("data:image/png;base64,aGk=", 10, "f") == b"hi"
    for bad in ("data:image/png,hi", "data:image/png;base64,a$b", "data:;base64"):
        with pytest.raises(ApiError):
            decode_data_url(bad, 10, "f")
    with pytest.raises(ApiError) as exc:
        decode_data_url("data:image/png;base64," + "A" * 100, 10, "f")
    assert exc.value.code == "image_too_large"
