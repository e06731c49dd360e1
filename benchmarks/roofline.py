"""Roofline per family and acceleration profile: where a render's time goes, and how close each stage comes to
what the device can do.

For each family, one real render is run through the served Family class with hooks that capture the first call
of each stage (text encoders, VAE encode, one denoiser call, VAE decode). Each captured call is then replayed:
milliseconds (median of --reps, synchronised), FLOPs (torch.utils.flop_counter, attention included), achieved
TFLOP/s, that rate as a fraction of a matmul ceiling measured on the same device with the same dtype, and peak
memory. Profiles: plain; +attention (the best backend the device has); +compile (regional); +cache (the id's step
cache: the whole render's full denoiser passes); +fp8 (where the GPU has fp8 tensor cores). A profile the device
cannot run is recorded with the reason, not skipped silently. Every render's end-to-end seconds are recorded too.

    python -m benchmarks.roofline --tiny                  # CPU, demo weights, end to end (shapes are small)
    python -m benchmarks.roofline --families flux-kontext,sdxl   # GPU: full-size random pipelines (weights/full_size.py)

Results: benchmarks/results/<device>/roofline.json (device, versions, command).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from benchmarks.harness import RESULTS, write_result
from pipelines.acceleration import LoadProfile
from pipelines.base import Family, RenderParams, RenderSpec, Task
from pipelines.registry import family_class
from server.config import DarkroomConfig
from weights.demo import build_demo

# Family -> (task, size, steps, batch sizes, the model id whose step cache the +cache profile uses).
WORKLOADS: dict[str, tuple[Task, int, int, tuple[int, ...], str]] = {
    "flux-kontext": (Task.EDIT, 1024, 28, (1,), "flux-kontext-pro"),  # Kontext 1024² + ref, 28 steps
    "sdxl": (Task.EDIT, 1024, 30, (1, 4, 8), "seedream-4.0"),  # img2img 1024², 30 steps
    "flux2-klein": (Task.EDIT, 1024, 4, (1,), "nano-banana-2"),
    "qwen-image-edit": (Task.EDIT, 1024, 40, (1,), "nano-banana"),
    "wan2.2-ti2v-5b": (Task.IMAGE_TO_VIDEO, 704, 40, (1,), "sora-2"),
}
TINY_SIZE = {"flux-kontext": 256, "sdxl": 256, "flux2-klein": 256, "qwen-image-edit": 256, "wan2.2-ti2v-5b": 128}
PROFILES = ("plain", "attention", "compile", "cache", "fp8")


def sync(device: str) -> None:
    """Wait for the device (timings mean nothing on an asynchronous device otherwise)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_ceiling(device: str, dtype: torch.dtype, reps: int) -> float:
    """Measured TFLOP/s of a large square matmul (the denominator of every fraction here)."""
    n = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times) / 1e12


@dataclass
class Captured:
    """One stage's first call: the callable and its arguments."""

    call: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def capture(fam: Family) -> tuple[dict[str, Captured], Callable[[], None]]:
    """Wrap each stage's entry point on the loaded pipeline to keep its first call; returns (captures, undo)."""
    main = next(iter(fam.pipelines.values()))
    got: dict[str, Captured] = {}
    undo: list[Callable[[], None]] = []

    def wrap(owner: Any, attr: str, stage: str) -> None:
        original = getattr(owner, attr)

        def keep(*args: Any, **kwargs: Any) -> Any:
            got.setdefault(stage, Captured(original, args, kwargs))
            return original(*args, **kwargs)

        setattr(owner, attr, keep)
        undo.append(lambda: setattr(owner, attr, original))

    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(main, name, None)
        if isinstance(module, torch.nn.Module):
            wrap(module, "forward", f"text_encode:{name}")
    vae = getattr(main, "vae", None)
    if vae is not None:
        wrap(vae, "encode", "vae_encode")
        wrap(vae, "decode", "vae_decode")
    for name in fam.denoisers:
        module = getattr(main, name, None)
        if module is not None:
            wrap(module, "forward", f"denoise_step:{name}")
    return got, lambda: [u() for u in reversed(undo)]


def measure_stage(stage: Captured, device: str, reps: int, ceiling: float, fam: Family,
                  known_flops: float | None = None) -> dict[str, Any]:
    """Replay one captured call: ms, FLOPs, TFLOP/s, fraction of the ceiling, peak memory. (Replayed without the
    step cache: its hooks live only for the render that captured the call, so every replay is a full pass.)"""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode():
        if fam.applied is not None and fam.applied.compile.get("active"):
            # A compiled region cannot run under the counter's dispatch mode (and a try poisons its frame): the
            # math is the plain profile's, counted there.
            flops = known_flops or 0.0
        else:
            counter = FlopCounterMode(display=False)
            with counter:
                stage.call(*stage.args, **stage.kwargs)
            flops = float(counter.get_total_flops())
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(reps):
            sync(device)
            started = time.perf_counter()
            stage.call(*stage.args, **stage.kwargs)
            sync(device)
            times.append(time.perf_counter() - started)
    ms = statistics.median(times) * 1000
    tflops = flops / (ms / 1000) / 1e12 if ms else 0.0
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return {"ms": round(ms, 3), "tflop": round(flops / 1e12, 6), "tflop_per_s": round(tflops, 4),
            "fraction_of_matmul_ceiling": round(tflops / ceiling, 4) if ceiling else None,
            "peak_gb": round(peak / 1e9, 3) if peak is not None else None}


def profile_for(name: str, base: LoadProfile, cache_hooks: bool, warmup: tuple[tuple[int, int, int], ...]) -> LoadProfile:
    """The load profile of one named profile (each adds one thing to plain)."""
    plain = LoadProfile(compile="off", step_cache_hooks=cache_hooks)
    if name in ("plain", "cache"):
        return plain
    if name == "attention":
        return replace(plain, attention=base.attention)
    if name == "compile":
        return replace(plain, compile="on", warmup=warmup)
    return replace(plain, variants=("fp8_dynamic",), variant_pinned=True)


def run_family(family: str, root: Path, device: str, dtype: torch.dtype, tiny: bool, reps: int, ceiling: float,
               profiles: tuple[str, ...], save: Callable[[dict[str, Any]], object] = lambda _r: None) -> dict[str, Any]:
    """Every profile's stages and end-to-end seconds for one family; `save` gets the figures so far after each
    profile (a run stopped at its time limit keeps them)."""
    
    task, size, steps, batches, model_id = WORKLOADS[family]
    if tiny:
        size = TINY_SIZE[family]
    cls = family_class(family)
    catalog = DarkroomConfig.packaged().catalog
    config = DarkroomConfig.packaged()
    accel = config.with_demo(frozenset(catalog.weights_needed()) if tiny else frozenset()).acceleration
    spec_entry = catalog.any_spec(model_id)
    base = accel.load_profile(spec_entry.weights)
    cache = accel.step_cache(model_id)
    frames = cls.valid_frames(2 * 24) if task is Task.IMAGE_TO_VIDEO else 0  # type: ignore[attr-defined]
    side = size // cls.size_multiple * cls.size_multiple
    flops_seen: dict[tuple[int, str], float] = {}
    out: dict[str, Any] = {"family": family, "task": str(task), "size": side, "steps": steps, "frames": frames,
                           "profiles": {}}
    for name in profiles:
        if name == "cache" and cache.kind == "none":
            out["profiles"][name] = {"skipped": f"{model_id} has no step cache"}
            continue
        started = time.perf_counter()
        try:
            fam = cls(root, device, dtype, profile_for(name, base, cache.kind != "none", ((side, side, frames),)))
            fam.load()
        except Exception as exc:  # noqa: BLE001 - a profile the device cannot run is recorded with its reason
            out["profiles"][name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            save(out)
            continue
        load_s = time.perf_counter() - started
        applied = fam.applied.record() if fam.applied else {}
        if name == "attention" and applied.get("attention", {}).get("active") == "native":
            reasons = applied["attention"]["reasons"] or ["the profile asks for native only"]
            out["profiles"][name] = {"skipped": "no backend beyond native here: " + "; ".join(reasons)}
        else:
            rows: dict[str, Any] = {}
            for batch in batches:
                try:
                    rows[f"batch_{batch}"] = _measure_batch(fam, task, side, steps, batch, frames, cache, name,
                                                            device, reps, ceiling, flops_seen)
                except Exception as exc:  # noqa: BLE001 - a failing render (out of memory, a compile error) is a row
                    rows[f"batch_{batch}"] = {"failed": f"{type(exc).__name__}: {str(exc)[:500]}"}
                    break  # a larger batch fails the same way
            out["profiles"][name] = {"load_s": round(load_s, 2), "applied": applied, **rows}
        del fam
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        save(out)
    return out


def _measure_batch(fam: Family, task: Task, side: int, steps: int, batch: int, frames: int, cache: Any, name: str,
                   device: str, reps: int, ceiling: float, flops_seen: dict[tuple[int, str], float]) -> dict[str, Any]:
    """One render of `batch` images end to end (after a two-step one at the same shapes, so first-call costs such
    as library handles and kernel autotuning stay out of it), then each captured stage replayed."""
    params = RenderParams(task, "a lighthouse at dusk, film grain", side, side, batch,
                          tuple(range(batch)), steps, 3.5, 0.75,
                          num_sources=0 if task is Task.GENERATE else 1, num_frames=frames,
                          fps=24.0 if frames else 0.0, preset=cache.encode() if name == "cache" else "")
    source = Image.new("RGB", (side, side), (90, 120, 200))
    spec = RenderSpec(params, sources=(source,) * params.num_sources)
    fam.render(replace(spec, params=replace(params, num_inference_steps=2)), lambda *_: None)
    got, undo = capture(fam)
    try:
        sync(device)
        started = time.perf_counter()
        result = fam.render(spec, lambda *_: None)
        sync(device)
        e2e = time.perf_counter() - started
    finally:
        undo()
    stages = {stage: measure_stage(c, device, reps, ceiling, fam, flops_seen.get((batch, stage)))
              for stage, c in sorted(got.items())}
    for stage, row in stages.items():
        flops_seen.setdefault((batch, stage), row["tflop"] * 1e12)
    return {"e2e_s": round(e2e, 3), "per_image_s": round(e2e / batch, 3),
            "denoiser_passes": result.stats.get("denoiser_passes"), "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="CPU (or any device), demo weights, small sizes")
    parser.add_argument("--families", default="flux-kontext,sdxl")
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--weights-root", type=Path, default=None,
                        help="Folder with <family>/ full-size builds (default: build them into a temp dir)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help="Where <device>/roofline.json goes (a device run points it at $OUT)")
    args = parser.parse_args()
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    ceiling = matmul_ceiling(device, dtype, args.reps)
    print(f"{device}: matmul ceiling {ceiling:.2f} TFLOP/s ({dtype})")
    manifest = DarkroomConfig.packaged().manifest
    label = "cpu" if device == "cpu" else torch.cuda.get_device_name(0).replace(" ", "_")
    results: list[dict[str, Any]] = []
    payload = {"matmul_ceiling_tflop_per_s": round(ceiling, 3), "dtype": str(dtype)}
    name = "roofline" + ("_tiny" if args.tiny else "")
    out = args.results_dir
    with tempfile.TemporaryDirectory() as tmp:
        for family in tqdm(args.families.split(","), desc="roofline", unit="family", disable=None):
            entry = next(e for e in manifest.values() if e.family == family)
            demo = build_demo(entry, Path(tmp) / "demo")
            if args.tiny:
                root = demo
            else:
                from weights.full_size import build_full_size

                root = (args.weights_root / family) if args.weights_root else \
                    build_full_size(family, demo, Path(tmp) / "full" / family, device)
            r = run_family(family, root, device, dtype, args.tiny, args.reps, ceiling,
                           tuple(args.profiles.split(",")),
                           save=lambda partial: write_result(label, name, {**payload, "results": [*results, partial]},
                                                             root=args.results_dir))
            results.append(r)
            out = write_result(label, name, {**payload, "results": results}, root=args.results_dir)
            for profile, prof in r["profiles"].items():
                if "skipped" in prof:
                    tqdm.write(f"{family:16} {profile:9} skipped: {prof['skipped'][:110]}")
                    continue
                for batch, row in prof.items():
                    if not batch.startswith("batch_"):
                        continue
                    if "failed" in row:
                        tqdm.write(f"{family:16} {profile:9} {batch:8} failed: {row['failed'][:110]}")
                        continue
                    step = next((s for k, s in row["stages"].items() if k.startswith("denoise_step")), {})
                    tqdm.write(f"{family:16} {profile:9} {batch:8} e2e {row['e2e_s']:7.2f} s  passes "
                               f"{row['denoiser_passes']}  step {step.get('ms', 0):8.2f} ms  "
                               f"{step.get('tflop_per_s', 0):7.3f} TFLOP/s "
                               f"({step.get('fraction_of_matmul_ceiling') or 0:.0%} of ceiling)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
