"""Bytes -> a validated, normalised PIL image (RGB for pictures, L for masks)."""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from server.errors import ApiError, ErrorCode

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF"}
# Image formats we recognise only to say "unsupported" (415) rather than "not an image" (422); never decoded.
_OTHER_IMAGE_MAGIC = (b"BM", b"II*\x00", b"MM\x00*", b"8BPS", b"\x00\x00\x01\x00", b"\x00\x00\x00\x0cjP  ",
                      b"\xff\x4f\xff\x51", b"qoif", b"\x76\x2f\x31\x01", b"DDS ")
_ISO_BRANDS = (b"ftypavif", b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavis")


def decode_image(data: bytes, field: str, max_pixels: int, mode: str = "RGB", max_side: int = 16384) -> Image.Image:
    """Decode and normalise one image.

    Only the allowed formats' parsers ever see the bytes (the content is sniffed; names and headers are not
    trusted). The pixel count and each side are checked from the header before pixels are decoded; a PNG or
    WebP with bytes after its end (a polyglot) is refused; EXIF orientation is applied; alpha is flattened onto
    white; a GIF gives its first frame. Decoder messages are never passed on (they can hold addresses).
    """
    if not data:
        raise ApiError(422, ErrorCode.INVALID_IMAGE, "the image is empty", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
            except UnidentifiedImageError:
                if data.startswith(_OTHER_IMAGE_MAGIC) or data[4:12] in _ISO_BRANDS:
                    raise ApiError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                                   "images must be PNG, JPEG, WebP or GIF", field) from None
                raise ApiError(422, ErrorCode.INVALID_IMAGE,
                               "the bytes are not a readable PNG, JPEG, WebP or GIF image", field) from None
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels or max(width, height) > max_side:
                raise ApiError(413, ErrorCode.IMAGE_TOO_LARGE,
                               f"image is {width}x{height}; at most {max_pixels} pixels and {max_side} px a side "
                               "are accepted", field)
            if _trailing_bytes(data, image.format):
                raise ApiError(422, ErrorCode.INVALID_IMAGE, "the image has extra data after its end (a polyglot "
                               "file?); re-save it as a plain PNG, JPEG or WebP", field)
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(413, ErrorCode.IMAGE_TOO_LARGE, "the image declares more pixels than are accepted",
                       field) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, struct.error, IndexError, KeyError,
            TypeError, ZeroDivisionError):
        raise ApiError(422, ErrorCode.INVALID_IMAGE, "the image is corrupt or truncated", field) from None
    return _normalise(image, mode)


def _trailing_bytes(data: bytes, fmt: str | None) -> bool:
    """True when a PNG or WebP goes on past its own end. JPEG and GIF are left alone: cameras append trailers
    after a JPEG's end marker, and the pixels are re-encoded anyway, so trailing bytes never reach an output."""
    if fmt == "WEBP":
        declared = int.from_bytes(data[4:8], "little") + 8
        return len(data) > declared + (declared & 1)
    if fmt == "PNG":
        pos = 8
        while pos + 8 <= len(data):
            length = int.from_bytes(data[pos:pos + 4], "big")
            kind = data[pos + 4:pos + 8]
            pos += 12 + length
            if kind == b"IEND":
                return pos < len(data)
        return False  # no IEND: the decoder reports the truncation
    return False


def _normalise(image: Image.Image, mode: str) -> Image.Image:
    if mode == "L":
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            # Transparent areas of a mask count as black (keep); painted areas keep their luminance.
            image = image.convert("RGBA")
            flat = Image.new("RGBA", image.size, (0, 0, 0, 255))
            flat.alpha_composite(image)
            return flat.convert("L")
        return image.convert("L") if image.mode not in ("I", "I;16", "F") else _to_8bit(image).convert("L")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    # 16-bit and float greyscale: scale the full range to 0..255 instead of clipping.
    lo, hi = image.getextrema()
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return image.point(lambda v: (v - lo) * scale).convert("L")
