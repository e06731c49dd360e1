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


def video_size(short_side: int, ratio: tuple[int, int], multiple: int) -> tuple[int, int]:
    """Width and height for a video tier: the short side rounded down to the grid (720p on a 32-grid is
    704, as Wan 2.2 TI2V renders it), the long side the nearest grid multiple to the exact ratio."""
    rw, rh = ratio
    short = max(multiple, short_side // multiple * multiple)
    long_exact = short * max(rw, rh) / min(rw, rh)
    long = max(short, round(long_exact / multiple) * multiple)
    return (long, short) if rw >= rh else (short, long)
