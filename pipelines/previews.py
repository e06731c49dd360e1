"""Live previews of a render: the denoising state as a small picture, every few steps, without the VAE.

A family's latents are turned into RGB by a linear projection (one 3 x C matrix and a bias) fitted once per loaded
model on its own VAE: synthetic colour fields are encoded, and the projection is the least-squares map from each
latent pixel to the average colour of the patch it covers. Decoding a preview is then one tiny matmul on the device
(ComfyUI's "latent2rgb" previews work the same way), never a full VAE decode mid-loop. The small picture leaves the
device with a non-blocking copy and is JPEG-encoded on a background thread, so the denoising loop only pays for the
matmul and the copy's launch.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import torch

log = logging.getLogger("darkroom.pipelines")

PreviewDelivery = Callable[[int, int, tuple[bytes, ...]], None]
"""Called (off the render thread) with (step, total, one JPEG per image of the call)."""


@dataclass(frozen=True)
class PreviewOptions:
    """How often and how large previews are made (the engine's settings travel with the work)."""

    every_steps: int = 2
    """At most one preview every this many denoising steps."""
    min_interval_s: float = 0.25
    """And at most one per this many seconds (fast renders would otherwise encode more than anyone can watch)."""
    max_side: int = 256
    """Longest side of a preview picture in pixels."""
    quality: int = 70
    """JPEG quality of a preview."""
    max_bytes: int = 64 * 1024
    """A preview larger than this is re-encoded smaller (bounded bytes per event, whatever the content)."""


@dataclass(frozen=True)
class LatentProjection:
    """latent (C channels) -> RGB in [-1, 1], fitted on a VAE; `r2` is how much of the colour variance it explains
    on the fitting set (1.0: exact)."""

    weight: torch.Tensor
    """(3, C) float32."""
    bias: torch.Tensor
    """(3,) float32."""
    r2: float
    fit_s: float

    def frames(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) raw VAE latents -> (B, h, w, 3) uint8 on the same device (a matmul, no VAE)."""
        import torch

        w = self.weight.to(latents.device, torch.float32)
        b = self.bias.to(latents.device, torch.float32)
        rgb = torch.einsum("bchw,oc->bhwo", latents.float(), w) + b
        return ((rgb.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def synthetic_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) in [-1, 1]: smooth random colour fields with hard-edged blocks of flat colour, so the
    fit sees gradients, edges and saturated colours alike."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=gen) * 2 - 1
    images = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    block = size // 4
    for i in range(count):
        for _ in range(3):
            y, x = (int(v) for v in torch.randint(0, size - block, (2,), generator=gen))
            images[i, :, y:y + block, x:x + block] = (torch.rand(3, 1, 1, generator=gen) * 2 - 1)
    return images


def encode_raw(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """The VAE's raw latents (its posterior's mode) of RGB `images` in [-1, 1]: (B, C, h, w). Video VAEs (Wan,
    Qwen-Image, LTX-2) take one-frame clips."""
    import torch

    device = next((p.device for p in vae.parameters() if p.device.type != "meta"), torch.device("cpu"))
    dtype = next(vae.parameters()).dtype
    video = type(vae).__name__ in ("AutoencoderKLWan", "AutoencoderKLQwenImage", "AutoencoderKLLTX2Video")
    x = images.to(device, dtype)
    if video:
        x = x.unsqueeze(2)
    with torch.inference_mode():
        dist = vae.encode(x).latent_dist
        latents = dist.mode() if hasattr(dist, "mode") else dist.mean
    if video:
        latents = latents[:, :, 0]
    return latents.float().cpu()


def fit_projection(vae: Any, size: int = 256, count: int = 8, ridge: float = 1e-3) -> LatentProjection:
    """Fit the latent -> RGB projection of `vae` (ridge-regularised least squares, bias included)."""
    import torch
    import torch.nn.functional as F

    started = time.perf_counter()
    images = synthetic_images(count, size)
    latents = encode_raw(vae, images)
    h, w = latents.shape[-2:]
    target = F.adaptive_avg_pool2d(images, (h, w))
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    gram = x1.T @ x1
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    solution = torch.linalg.solve(gram, x1.T @ y.double()).float()
    predicted = x1.float() @ solution
    r2 = 1.0 - float(((predicted - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum().clamp_min(1e-12))
    return LatentProjection(solution[:-1].T.contiguous(), solution[-1].contiguous(), r2,
                            time.perf_counter() - started)


def encode_preview(frame: Any, options: PreviewOptions) -> bytes:
    """One (h, w, 3) uint8 array as a JPEG whose long side is `options.max_side` (upscaled from latent size,
    smoothly) and whose size stays within `options.max_bytes`."""
    image = Image.fromarray(frame)
    scale = options.max_side / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BILINEAR)
    quality = options.quality
    while True:
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        if out.tell() <= options.max_bytes or quality <= 20:
            return out.getvalue()
        quality -= 20


class PreviewTap:
    """One render's previews: decides which steps get one, starts the copy off the device, and encodes and delivers
    on a background thread (one at a time: a preview still encoding makes the next one skip, never queue)."""

    def __init__(self, options: PreviewOptions, deliver: PreviewDelivery) -> None:
        self.options = options
        self.deliver = deliver
        self._last = 0.0
        self._busy = threading.Event()
        self._thread: threading.Thread | None = None
        self.made = 0
        self.skipped = 0

    def wants(self, step: int, total: int) -> bool:
        """Whether step `step` (1-based) of `total` gets a preview (the last step never does: the result follows)."""
        if step >= total or step % self.options.every_steps:
            return False
        if self._busy.is_set() or time.perf_counter() - self._last < self.options.min_interval_s:
            self.skipped += 1
            return False
        return True

    def offer(self, step: int, total: int, frames: torch.Tensor) -> None:
        """(B, h, w, 3) uint8 frames on the device: copied off it without waiting, then encoded and delivered."""
        import torch

        self._last = time.perf_counter()
        self._busy.set()
        ready: Any = None
        if frames.device.type == "cuda":
            host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host = frames.cpu()

        def finish() -> None:
            try:
                if ready is not None:
                    ready.synchronize()
                arrays = host.numpy()
                self.deliver(step, total, tuple(encode_preview(a, self.options) for a in arrays))
                self.made += 1
            except Exception:  # a preview is never worth a render: logged and dropped
                log.exception("preview at step %d could not be delivered", step)
            finally:
                self._busy.clear()

        self._thread = threading.Thread(target=finish, name="darkroom-preview", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Wait for a preview still being encoded (so none arrives after the render's outcome)."""
        if self._thread is not None:
            self._thread.join(timeout)


def token_grid(tokens: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Packed latents (B, h*w, D), row-major, as a (B, D, h, w) grid; h and w follow from the token count and the
    render's aspect ratio (pipelines round sizes onto their own grid, so the count is what is certain)."""
    batch, count, dim = tokens.shape
    rows = max(1, round((count * height / width) ** 0.5))
    cols = count // rows
    if rows * cols != count:
        raise ValueError(f"{count} tokens do not tile a {width}x{height} render")
    return tokens.reshape(batch, rows, cols, dim).permute(0, 3, 1, 2)
