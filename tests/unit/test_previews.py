"""Live previews: the latent -> RGB projection fit, packed-token grids, and the tap that paces and delivers them."""

from __future__ import annotations

import io
import threading
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.previews import PreviewOptions, PreviewTap, encode_preview, fit_projection, token_grid


class LinearVae(torch.nn.Module):
    """A VAE whose encoder is a known linear map of 8x8-averaged colour: the fit must invert it exactly."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.mix = torch.nn.Parameter(torch.randn(channels, 3, generator=gen))
        self.shift = torch.nn.Parameter(torch.randn(channels, generator=gen))

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        pooled = F.avg_pool2d(x, 8)
        latents = torch.einsum("bchw,lc->blhw", pooled, self.mix) + self.shift.view(1, -1, 1, 1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: latents))


def test_the_fit_inverts_a_linear_encoder() -> None:
    vae = LinearVae()
    projection = fit_projection(vae, size=64, count=4)
    assert projection.r2 > 0.999
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = vae.encode(images).latent_dist.mode()
    frames = projection.frames(latents)
    assert frames.shape == (2, 8, 8, 3) and frames.dtype == torch.uint8
    expected = ((F.avg_pool2d(images, 8).permute(0, 2, 3, 1) + 1) * 127.5)
    assert (frames.float() - expected).abs().max() < 2.0


def test_token_grid_is_row_major_and_follows_the_aspect_ratio() -> None:
    grid = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)  # (B, D, h, w)
    tokens = grid.permute(0, 2, 3, 1).reshape(1, 12, 2)  # packed as the pipelines pack
    assert torch.equal(token_grid(tokens, 256, 192), grid)
    with pytest.raises(ValueError, match="do not tile"):
        token_grid(torch.zeros(1, 13, 2), 256, 192)


def test_encoded_previews_are_small_jpegs_of_the_asked_side() -> None:
    frame = (torch.rand(64, 48, 3) * 255).to(torch.uint8).numpy()  # noise: the worst case for JPEG
    data = encode_preview(frame, PreviewOptions(max_side=256, max_bytes=30_000))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and max(im.size) == 256 and im.size[0] < im.size[1]
    assert len(data) <= 30_000


def test_the_tap_paces_previews_and_never_queues_them() -> None:
    got: list[tuple[int, int, int]] = []
    release = threading.Event()

    def deliver(step: int, total: int, jpegs: tuple[bytes, ...]) -> None:
        release.wait(5)
        got.append((step, total, len(jpegs)))

    tap = PreviewTap(PreviewOptions(every_steps=2, min_interval_s=0.0), deliver)
    frames = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    assert not tap.wants(1, 10) and tap.wants(2, 10) and not tap.wants(10, 10)  # odd steps and the last: none
    tap.offer(2, 10, frames)
    assert not tap.wants(4, 10) and tap.skipped == 1  # one still encoding: the next is skipped, not queued
    release.set()
    tap.close()
    assert got == [(2, 10, 2)] and tap.made == 1
    slow = PreviewTap(PreviewOptions(every_steps=1, min_interval_s=60.0), deliver)
    slow.offer(1, 10, frames)
    slow.close()
    time.sleep(0.01)
    assert not slow.wants(2, 10)  # within min_interval_s of the last one
