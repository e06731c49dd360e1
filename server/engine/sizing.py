"""quality x aspect_ratio -> exact output width x height for a family's size grid."""

from __future__ import annotations


def output_size(long_side: int, ratio: tuple[int, int], multiple: int) -> tuple[int, int]:
    """Width and height with the given long side, the ratio's shape, both multiples of `multiple`.

    The long side is exact (tiers are multiples of 64); the short side is the
    nearest multiple to the exact ratio, never below one `multiple`.
    """
    rw, rh = ratio
    if rw >= rh:
        short = max(multiple, round(long_side * rh / rw / multiple) * multiple)
        return long_side, short
    short = max(multiple, round(long_side * rw / rh / multiple) * multiple)
    return short, long_side


def ratio_of(width: int, height: int) -> tuple[int, int]:
    """The exact ratio of a source image, for aspect_ratio='auto'."""
    return width, height
