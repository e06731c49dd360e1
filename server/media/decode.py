"""Bytes -> a validated, normalised PIL image (RGB for pictures, L for masks)."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from server.errors import ApiError, ErrorCode

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF"}


def decode_image(data: bytes, field: str, max_pixels: int, mode: str = "RGB") -> Image.Image:
    """Decode and normalise one image.

    Checks the format and pixel count from the header before decoding pixels;
    applies EXIF orientation; flattens alpha onto white; takes the first frame
    of a GIF. Decoder messages are never passed on (they can hold addresses).
    """
    if not data:
        raise ApiError(422, ErrorCode.INVALID_IMAGE, "the image is empty", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ALLOWED_FORMATS:
                raise ApiError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                               "images must be PNG, JPEG, WebP or GIF", field)
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise ApiError(413, ErrorCode.IMAGE_TOO_LARGE,
                               f"image is {width}x{height}; at most {max_pixels} pixels are accepted", field)
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
    except ApiError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(422, ErrorCode.INVALID_IMAGE, "the bytes are not a readable PNG, JPEG, WebP or GIF image",
                       field) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError):
        raise ApiError(422, ErrorCode.INVALID_IMAGE, "the image is corrupt or truncated", field) from None
    return _normalise(image, mode)


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
