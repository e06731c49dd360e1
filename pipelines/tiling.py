"""Tiled refine-upscale: render beyond a model's native size with its own img2img, tile by tile.

The picture is upscaled (Lanczos) to the target size, cut into overlapping
tiles of the model's native size, each tile is refined by `refine` (img2img at
a low strength, so it adds detail without changing the composition), and the
tiles are blended back with linear ramps across every overlap. The weights of
overlapping tiles sum to one everywhere, so where `refine` changes nothing the
output equals the input exactly: a flat colour stays flat across the seams.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # the last tile sits flush with the edge
    return starts


def tile_boxes(width: int, height: int, tile: int, overlap: int) -> list[Box]:
    """Tiles of at most `tile` px covering the image, overlapping by at least `overlap` px."""
    if not 0 <= overlap < tile:
        raise ValueError("overlap must be smaller than the tile")
    tw, th = min(tile, width), min(tile, height)
    return [(x, y, x + tw, y + th) for y in _starts(height, th, overlap) for x in _starts(width, tw, overlap)]


def _ramp(length: int, fade_in: int, fade_out: int) -> np.ndarray:
    w = np.ones(length, dtype=np.float64)
    if fade_in:
        w[:fade_in] = np.arange(1, fade_in + 1) / (fade_in + 1)
    if fade_out:
        w[length - fade_out:] = np.minimum(w[length - fade_out:], np.arange(fade_out, 0, -1) / (fade_out + 1))
    return w


def _weights(box: Box, boxes: list[Box]) -> np.ndarray:
    """Separable weights fading over the part of this tile that its neighbours also cover."""
    left, top, right, bottom = box
    fade = {"l": 0, "t": 0, "r": 0, "b": 0}
    for ol, ot, orr, ob in boxes:
        rows_meet = ot < bottom and ob > top
        cols_meet = ol < right and orr > left
        if rows_meet and ol < left < orr:
            fade["l"] = max(fade["l"], orr - left)
        if rows_meet and ol < right < orr:
            fade["r"] = max(fade["r"], right - ol)
        if cols_meet and ot < top < ob:
            fade["t"] = max(fade["t"], ob - top)
        if cols_meet and ot < bottom < ob:
            fade["b"] = max(fade["b"], bottom - ot)
    wx = _ramp(right - left, fade["l"], fade["r"])
    wy = _ramp(bottom - top, fade["t"], fade["b"])
    return np.outer(wy, wx)


def refine_tiled(image: Image.Image, size: tuple[int, int], tile: int, overlap: int,
                 refine: Callable[[Image.Image, int], Image.Image]) -> Image.Image:
    """Upscale `image` to `size`, refine each tile with `refine(tile_image, tile_index)`, blend seamlessly."""
    big = image.convert("RGB").resize(size, Image.Resampling.LANCZOS) if image.size != size else image.convert("RGB")
    boxes = tile_boxes(size[0], size[1], tile, overlap)
    acc = np.zeros((size[1], size[0], 3), dtype=np.float64)
    norm = np.zeros((size[1], size[0], 1), dtype=np.float64)
    for index, box in enumerate(boxes):
        left, top, right, bottom = box
        crop = big.crop(box)
        out = refine(crop, index)
        if out.size != crop.size:
            out = out.resize(crop.size, Image.Resampling.LANCZOS)
        w = _weights(box, boxes)[..., None]
        acc[top:bottom, left:right] += np.asarray(out.convert("RGB"), dtype=np.float64) * w
        norm[top:bottom, left:right] += w
    return Image.fromarray(np.clip(np.rint(acc / norm), 0, 255).astype(np.uint8))
