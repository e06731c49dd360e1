"""Clips to MP4 (H.264 video, AAC audio) with PyAV, written atomically like every output."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

AUDIO_CHANNELS = 2


def _fit_audio(audio: np.ndarray, sample_rate: int, seconds: float) -> np.ndarray:
    """Stereo float32 (2, n) exactly `seconds` long: mono duplicated, trimmed or padded with silence."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.shape[0] == 1:
        audio = np.repeat(audio, AUDIO_CHANNELS, axis=0)
    audio = np.clip(audio[:AUDIO_CHANNELS], -1.0, 1.0)
    want = round(seconds * sample_rate)
    if audio.shape[1] >= want:
        return np.ascontiguousarray(audio[:, :want])
    return np.pad(audio, ((0, 0), (0, want - audio.shape[1])))


def encode_mp4(frames: np.ndarray, fps: float, audio: np.ndarray | None = None, sample_rate: int = 0,
               crf: int = 18) -> bytes:
    """uint8 frames (F, H, W, 3) at `fps` (+ optional audio) -> MP4 bytes; the audio track spans the video."""
    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(buf, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=rate)
        video.height, video.width = frames.shape[1], frames.shape[2]
        video.pix_fmt = "yuv420p"
        # Deterministic single-threaded encode: the same frames give the same bytes.
        video.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate)
            audio_stream.layout = "stereo"
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio_stream is not None and audio is not None:
            samples = _fit_audio(audio, sample_rate, len(frames) / fps)
            chunk = 1024
            for start in range(0, samples.shape[1], chunk):
                block = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + chunk]),
                                                   format="fltp", layout="stereo")
                block.sample_rate = sample_rate
                block.pts = start
                for packet in audio_stream.encode(block):
                    container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return buf.getvalue()


def decode_frames(data: bytes, max_pixels: int = 1 << 28) -> tuple[np.ndarray, float]:
    """An MP4 -> its uint8 frames (F, H, W, 3) and frame rate (a clip to continue, or its last frame). ValueError
    for a file that is not a readable clip or whose frames hold more than `max_pixels` pixels in all (an upload
    cannot make the server decode gigabytes)."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError("the file has no video track")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 24)
            frames = []
            pixels = 0
            for frame in container.decode(stream):
                pixels += frame.width * frame.height
                if pixels > max_pixels:
                    raise ValueError(f"the clip has more than {max_pixels} pixels in all frames")
                frames.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as exc:
        raise ValueError("the file is not a readable video") from exc
    if not frames:
        raise ValueError("the clip has no frames")
    return np.stack(frames), fps
