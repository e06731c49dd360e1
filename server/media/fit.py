"""Renders brought to the exact size a client asked for.

Models render on a grid (multiples of 16, 32 or 64 px); clients ask for any size. The render is scaled so it
covers the requested size with its aspect ratio kept, then centre-cropped: when one side already matches (the
usual case, the grid only rounds the other) that is a pure crop of a few pixels, with no resampling at all.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def cover_box(src: tuple[int, int], dst: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(scaled size, crop box) that maps an image of `src` onto exactly `dst` without distortion."""
    sw, sh = src
    dw, dh = dst
    scale = max(dw / sw, dh / sh)
    scaled = (max(dw, round(sw * scale)), max(dh, round(sh * scale)))
    left, top = (scaled[0] - dw) // 2, (scaled[1] - dh) // 2
    return scaled, (left, top, left + dw, top + dh)


def fit_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` at exactly `size` (scaled to cover, centre-cropped); unchanged when it already has that size."""
    if image.size == size:
        return image
    scaled, box = cover_box(image.size, size)
    if scaled != image.size:
        image = image.resize(scaled, Image.Resampling.LANCZOS)
    return image.crop(box)


def fit_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 frames (F, H, W, 3) at exactly `size` = (width, height), each fitted like `fit_image`."""
    if (frames.shape[2], frames.shape[1]) == size:
        return frames
    return np.stack([np.asarray(fit_image(Image.fromarray(f), size)) for f in frames])
