"""Reading clips back (what extensions continue): frames and rate, bounded, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

from server.media.video import decode_frames, encode_mp4


def test_a_written_clip_reads_back_with_its_frames_and_rate() -> None:
    frames = np.zeros((9, 64, 96, 3), np.uint8)
    frames[:, 10:20] = 200
    got, fps = decode_frames(encode_mp4(frames, 16))
    assert got.shape == (9, 64, 96, 3) and fps == 16.0
    assert abs(int(got[4, 15, 50, 0]) - 200) < 8  # the stripe survived the round trip


def test_oversized_and_unreadable_clips_are_refused() -> None:
    data = encode_mp4(np.zeros((9, 64, 96, 3), np.uint8), 24)
    with pytest.raises(ValueError, match="pixels"):
        decode_frames(data, max_pixels=3 * 64 * 96)
    with pytest.raises(ValueError, match="not a readable video"):
        decode_frames(b"\x00\x00\x00\x18ftypmp42 but not really")
