"""Tiled refine-upscale: coverage, exact blending, flat colours stay flat across seams."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.tiling import _weights, refine_tiled, tile_boxes


@pytest.mark.parametrize(("w", "h", "tile", "overlap"), [(4096, 4096, 1024, 128), (4096, 2304, 1024, 128),
                                                          (1000, 300, 512, 64), (512, 512, 512, 64)])
def test_tiles_cover_everything_with_unit_weights(w: int, h: int, tile: int, overlap: int) -> None:
    boxes = tile_boxes(w, h, tile, overlap)
    total = np.zeros((h, w))
    for box in boxes:
        left, top, right, bottom = box
        assert right - left <= tile and bottom - top <= tile
        total[top:bottom, left:right] += _weights(box, boxes)
    # Weights do not have to sum to 1 (they are normalised), but every pixel must be covered.
    assert total.min() > 0


def test_identity_refine_is_lossless_and_flat_stays_flat() -> None:
    flat = Image.new("RGB", (1000, 600), (123, 45, 210))
    out = refine_tiled(flat, (2000, 1200), tile=512, overlap=96, refine=lambda tile, i: tile)
    arr = np.asarray(out)
    assert out.size == (2000, 1200)
    assert (arr == np.array([123, 45, 210], dtype=np.uint8)).all()


def test_seams_blend_between_different_tiles() -> None:
    # Each tile is replaced by a flat colour depending on its index; blended seams must lie between them.
    base = Image.new("RGB", (1024, 512))
    out = np.asarray(refine_tiled(base, (1024, 512), tile=512, overlap=128,
                                  refine=lambda tile, i: Image.new("RGB", tile.size, (0 if i == 0 else 200, 0, 0))))
    row = out[256, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 200
    assert (np.diff(row) >= 0).all()  # a monotone ramp across the overlap, no hard edge
    assert 0 < row[448] < 200  # inside the overlap of tiles 0 (0-512) and 1 (384-896)


def test_overlap_must_be_smaller_than_the_tile() -> None:
    with pytest.raises(ValueError):
        tile_boxes(100, 100, 64, 64)
