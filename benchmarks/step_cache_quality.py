"""What each fast preset's step cache costs in quality and saves in denoiser passes.

For every model id with a step cache (configs/acceleration.toml), render the same request with and without the
cache at the same seed and size, count full denoiser passes, and compare the outputs: PSNR and SSIM (on the
luma channel, 8x8 windows) of the cached render against the uncached one. Video ids compare every frame.

    python -m benchmarks.step_cache_quality [--weights-dir DIR] [--size 512] [--seeds 3]

Without --weights-dir it runs on the demo weights (built on the fly): the mechanism is real, the pictures are
noise; on real weights the same script gives the figures a preset's threshold should be chosen by.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipelines.base import RenderParams, RenderSpec, Task
from pipelines.registry import family_class
from pipelines.video_base import VideoFamily
from server.acceleration_config import Acceleration
from server.catalog import Catalog
from server.config import DarkroomConfig
from weights.demo import build_demo

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays (inf when equal)."""
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 8) -> float:
    """Mean SSIM of the luma of two uint8 RGB images over non-overlapping windows (Wang et al. 2004 constants)."""
    def luma(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])

    ya, yb = luma(a), luma(b)
    h, w = (ya.shape[0] // window) * window, (ya.shape[1] // window) * window
    ya = ya[:h, :w].reshape(h // window, window, w // window, window).swapaxes(1, 2)
    yb = yb[:h, :w].reshape(h // window, window, w // window, window).swapaxes(1, 2)
    mu_a, mu_b = ya.mean(axis=(2, 3)), yb.mean(axis=(2, 3))
    var_a, var_b = ya.var(axis=(2, 3)), yb.var(axis=(2, 3))
    cov = ((ya - mu_a[..., None, None]) * (yb - mu_b[..., None, None])).mean(axis=(2, 3))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float((((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean())


def _pixels(result: object) -> np.ndarray:
    if result.videos:  # type: ignore[attr-defined]
        return result.videos[0].frames  # type: ignore[attr-defined]
    return np.asarray(result.images[0])[None]  # type: ignore[attr-defined]


def measure(model_id: str, accel: Acceleration, catalog: Catalog, root: Path, size: int, seeds: int) -> dict:
    """Passes and quality of one id's preset against its uncached render, averaged over `seeds` seeds."""
    spec = catalog.any_spec(model_id)
    fam_cls = family_class(spec.family)
    fam = fam_cls(root / spec.weights, "cuda:0" if torch.cuda.is_available() else "cpu",
                  torch.bfloat16 if torch.cuda.is_available() else torch.float32, accel.load_profile(spec.weights))
    fam.load()
    cache = accel.step_cache(model_id)
    video = issubclass(fam_cls, VideoFamily)
    side = size // fam_cls.size_multiple * fam_cls.size_multiple
    task = Task.IMAGE_TO_VIDEO if video else Task.EDIT
    frames = fam_cls.valid_frames(2 * spec.defaults.fps) if video else 0  # type: ignore[attr-defined]
    rows = []
    for seed in range(seeds):
        params = RenderParams(task, "the same subject, golden hour light", side, side, 1, (seed,),
                              spec.defaults.num_inference_steps, spec.defaults.guidance_scale, 1.0, num_sources=1,
                              num_frames=frames, fps=float(spec.defaults.fps) if video else 0.0,  # type: ignore[attr-defined]
                              source_size=(side, side))
        source = Image.new("RGB", (side, side), (40 + 60 * seed, 120, 200 - 50 * seed))
        exact = fam.render(RenderSpec(params, sources=(source,)), lambda *_: None)
        cached = fam.render(RenderSpec(params.__class__(**{**params.__dict__, "preset": cache.encode()}),
                                       sources=(source,)), lambda *_: None)
        a, b = _pixels(exact), _pixels(cached)
        rows.append({"passes": cached.stats["denoiser_passes"], "uncached_passes": exact.stats["denoiser_passes"],
                     "psnr_db": psnr(a, b), "ssim": float(np.mean([ssim(x, y) for x, y in zip(a, b, strict=True)]))})
    return {"id": model_id, "family": spec.family, "cache": cache.encode(), "steps": params.num_inference_steps,
            "size": side, "frames": frames, "passes": float(np.mean([r["passes"] for r in rows])),
            "uncached_passes": rows[0]["uncached_passes"], "psnr_db": float(np.mean([r["psnr_db"] for r in rows])),
            "ssim": float(np.mean([r["ssim"] for r in rows])), "seeds": seeds}


def main() -> None:
    from benchmarks.harness import write_result

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights-dir", type=Path, default=None, help="Real weights (default: demo weights)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    catalog = DarkroomConfig.packaged().catalog
    with tempfile.TemporaryDirectory() as tmp:
        root = args.weights_dir or Path(tmp)
        demo = args.weights_dir is None
        if demo:
            for name in catalog.weights_needed():
                build_demo(DarkroomConfig.packaged().manifest[name], root)
        accel = DarkroomConfig.packaged().with_demo(
            frozenset(catalog.weights_needed()) if demo else frozenset()).acceleration
        ids = [i for i in catalog.all_ids() if accel.step_cache(i).kind != "none"]
        results = []
        for model_id in tqdm(ids, desc="step cache quality", unit="id", disable=None):
            r = measure(model_id, accel, catalog, root, args.size, args.seeds)
            results.append(r)
            tqdm.write(f"{model_id:22} {r['cache']:17} passes {r['passes']:5.1f} of {r['uncached_passes']:3d}"
                  f"  PSNR {r['psnr_db']:6.1f} dB  SSIM {r['ssim']:.4f}")
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0).replace(" ", "_")
    out = write_result(device, "step_cache_quality", {"weights": "demo" if demo else str(args.weights_dir),
                                                      "results": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
