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


def exact_image_size(long_side: int, ratio: tuple[int, int]) -> tuple[int, int]:
    """The size a client gets for a tier and an aspect ratio: the tier's long side and the ratio's exact short
    side, whatever grid the model renders on (the render is cropped or resized to it)."""
    rw, rh = ratio
    short = max(1, round(long_side * min(rw, rh) / max(rw, rh)))
    return (long_side, short) if rw >= rh else (short, long_side)


def exact_video_size(short_side: int, ratio: tuple[int, int]) -> tuple[int, int]:
    """The size a client gets for a video tier: the tier's short side (720p is 720 px) and the long side of the
    exact ratio, both even because H.264 in yuv420p (what every player decodes) needs even sides."""
    rw, rh = ratio
    long = max(short_side, 2 * round(short_side * max(rw, rh) / min(rw, rh) / 2))
    return (long, short_side) if rw >= rh else (short_side, long)


def render_size_for(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The size a model on a `multiple` grid renders for an exact output of width x height: the long side
    rounded to the grid, the short side from the exact ratio (then cropped or resized to width x height)."""
    long_side = max(multiple, round(max(width, height) / multiple) * multiple)
    return output_size(long_side, (width, height), multiple)


def render_video_size_for(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The size a video model renders for an exact clip of width x height (see video_size)."""
    return video_size(min(width, height), (width, height), multiple)
