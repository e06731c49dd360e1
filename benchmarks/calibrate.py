"""Calibrate configs/memory.toml and configs/costs.toml on this machine's GPU.

For each family whose weights are present (real ones from `darkroom weights pull`, else the demo weights; or a
folder named with --weights-path, such as a full-size random build from `python -m weights.full_size`), the
script renders a grid of (images, size[, frames]) through the same Family classes the server runs and measures
the peak device memory beyond the weights (`torch.cuda.max_memory_allocated`), seconds per denoising step, the
seconds around the steps (text encoding, VAE), and load seconds from disk and from pinned host RAM. It fits each
family's two memory coefficients on one grid so the estimate covers every point, then checks the estimate on a
held-out grid: it must never undershoot a measured peak by more than 5%.

    python -m benchmarks.calibrate                                 # every family with weights
    python -m benchmarks.calibrate --families sdxl,flux-kontext --write-configs
    python -m benchmarks.calibrate --device cpu --quick            # the code path on demo weights, no memory figures
    python -m weights.full_size flux-kontext --out /scratch/kontext && \
        python -m benchmarks.calibrate --families flux-kontext --weights-path /scratch/kontext --write-configs

Writes benchmarks/results/<device>/calibration.json (device name, versions, command, every point). With
--write-configs the fitted coefficients, seconds and transfer rates replace the estimates in configs/.
Memory is measured only on CUDA; on a CPU the script times steps and loads and says memory was not measured.
The figures describe the weights it ran: demo weights give demo figures, never write those into configs/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.calibration_fit import PeakSample, check_estimates, estimate, fit_coefficients, set_toml_value
from pipelines.base import Family, RenderParams, RenderSpec, Task
from pipelines.memory import MemoryCoefficients
from pipelines.registry import FAMILIES
from pipelines.video_base import VideoFamily
from server.config import DarkroomConfig
from server.engine.costs import FamilyCost
from weights.full_size import RANDOM_MARKER
from weights.locate import locate, real_weights_ready

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4  # the first interval includes warm-up; the median of the other three is the step time


@dataclass(frozen=True)
class GridPoint:
    """One render to measure: output size, images per call (the batch multiplier), frames for video."""

    width: int
    height: int
    images: int = 1
    frames: int = 0
    holdout: bool = False


def image_grid(quick: bool) -> list[GridPoint]:
    """Fit on square sizes at 1 and 2 images; hold out a wide size and 4 images."""
    if quick:
        return [GridPoint(64, 64), GridPoint(128, 128, 2), GridPoint(128, 64, 1, holdout=True)]
    return [GridPoint(512, 512), GridPoint(1024, 1024), GridPoint(1024, 1024, 2), GridPoint(512, 512, 2),
            GridPoint(1344, 768, holdout=True), GridPoint(1024, 1024, 4, holdout=True)]


def video_grid(quick: bool, fam: type[VideoFamily]) -> list[GridPoint]:
    """Fit on 480p clips of two lengths; hold out 720p."""
    if quick:
        return [GridPoint(64, 64, frames=fam.valid_frames(9)), GridPoint(96, 64, frames=fam.valid_frames(17)),
                GridPoint(64, 96, frames=fam.valid_frames(9), holdout=True)]
    return [GridPoint(832, 480, frames=fam.valid_frames(33)), GridPoint(832, 480, frames=fam.valid_frames(81)),
            GridPoint(1280, 704, frames=fam.valid_frames(49), holdout=True)]


def params_for(cls: type[Family], point: GridPoint, steps: int = STEPS) -> RenderParams:
    """The family's main task at this grid point (edits get one source, videos a first frame)."""
    if point.frames:
        task, sources = Task.IMAGE_TO_VIDEO, 1
    elif Task.EDIT in cls.tasks:
        task, sources = Task.EDIT, 1
    else:
        task, sources = Task.GENERATE, 0
    return RenderParams(task=task, prompt="a lighthouse on a cliff at dusk", width=point.width, height=point.height,
                        num_images=point.images, seeds=tuple(range(point.images)), num_inference_steps=steps,
                        guidance_scale=4.0, strength=1.0, num_sources=sources, num_frames=point.frames,
                        fps=16.0 if point.frames else 0.0)


def structural_terms(cls: type[Family], params: RenderParams, c: MemoryCoefficients) -> tuple[int, int]:
    """(T, V) of the family's formula: its estimate with only one coefficient set to 1 byte."""
    tokens = cls.activation_bytes(params, 1, replace(c, bytes_per_token=1, vae_bytes_per_pixel=0,
                                                     vae_bytes_per_voxel=0))
    vae = cls.activation_bytes(params, 1, replace(c, bytes_per_token=0, vae_bytes_per_pixel=1, vae_bytes_per_voxel=1))
    return tokens, vae


class Meter:
    """Device clock and memory: CUDA events and allocator peaks, or wall time only on a CPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device.startswith("cuda")
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def start(self) -> int | None:
        """Reset the peak counter; bytes allocated now (the weights) or None without CUDA."""
        if not self.cuda:
            return None
        self.sync()
        self.torch.cuda.empty_cache()
        self.torch.cuda.reset_peak_memory_stats(self.device)
        return int(self.torch.cuda.memory_allocated(self.device))

    def peak_since(self, base: int | None) -> int | None:
        if base is None:
            return None
        self.sync()
        return int(self.torch.cuda.max_memory_allocated(self.device)) - base


def render(fam: Family, params: RenderParams, meter: Meter) -> dict[str, Any]:
    """One render: wall seconds, seconds per step (median, warm-up interval excluded), peak bytes beyond weights."""
    from PIL import Image

    stamps: list[float] = []

    def on_step(_done: int, _total: int) -> None:
        meter.sync()  # the host runs ahead of the GPU otherwise
        stamps.append(time.perf_counter())

    sources = tuple(Image.new("RGB", (params.width, params.height), (40 + 30 * i, 90, 200))
                    for i in range(params.num_sources))
    base = meter.start()
    started = time.perf_counter()
    fam.run(RenderSpec(params, sources=sources), on_step)
    meter.sync()
    total = time.perf_counter() - started
    intervals = [b - a for a, b in itertools.pairwise(stamps)]
    step_s = statistics.median(intervals) if intervals else total / max(1, params.num_inference_steps)
    return {"total_s": round(total, 4), "step_s": round(step_s, 4),
            "around_steps_s": round(max(0.0, total - step_s * params.num_inference_steps), 4),
            "peak_bytes": meter.peak_since(base)}


def drop_page_cache() -> bool:
    """Ask the kernel to drop clean page-cache pages (root only), so a load really reads the disk."""
    import os

    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def time_loads(fam: Family, meter: Meter, drop_cache: bool) -> dict[str, Any]:
    """Load from disk (from_pretrained + move to the device), then park in pinned RAM and time the way back."""
    import diffusers

    getattr(diffusers, fam.pipeline_class)  # import the pipeline's modules first: seconds that are not loading
    nbytes = sum(c.bytes for c in fam.components())
    dropped = drop_page_cache() if drop_cache else False
    meter.sync()
    started = time.perf_counter()
    fam.load()
    meter.sync()
    out: dict[str, Any] = {"bytes": nbytes, "disk_s": round(time.perf_counter() - started, 3), "ram_s": None,
                           "page_cache": "dropped" if dropped else "as found (may hold the weights)"}
    if meter.cuda:
        fam.move_to("cpu")
        fam.pin_host_memory()
        meter.sync()
        started = time.perf_counter()
        fam.move_to(meter.device)
        meter.sync()
        out["ram_s"] = round(time.perf_counter() - started, 3)
    return out


def calibrate_family(name: str, fam: Family, quick: bool, meter: Meter, config: DarkroomConfig,
                     drop_cache: bool = False) -> dict[str, Any]:
    """Load, warm up, measure the grid and the reference size; fit and check when memory was measured."""
    cls = type(fam)
    loads = time_loads(fam, meter, drop_cache)
    video = issubclass(cls, VideoFamily)
    grid = video_grid(quick, cls) if video else image_grid(quick)  # type: ignore[arg-type]
    render(fam, params_for(cls, grid[0], steps=2), meter)  # warm-up: kernels, allocator, cuDNN choices
    points = []
    for point in grid:
        params = params_for(cls, point)
        tokens, vae = structural_terms(cls, params, config.coefficients(name))
        points.append({**asdict(point), "tokens_term": tokens, "vae_term": vae,
                       "estimate_before": cls.activation_bytes(params, 1, config.coefficients(name)), **render(fam, params, meter)})
    result: dict[str, Any] = {"family": name, "weights": str(fam.model_dir), "loads": loads, "points": points}
    measured = [p for p in points if p["peak_bytes"] is not None]
    if measured:
        samples = {id(p): PeakSample(p["tokens_term"], p["vae_term"], max(1, p["peak_bytes"])) for p in measured}
        fit = fit_coefficients([samples[id(p)] for p in measured if not p["holdout"]])
        for p in measured:
            p["estimate_after"] = estimate(fit, samples[id(p)])
        result["fit"] = asdict(fit)
        result["check_before"] = check_estimates([(p["estimate_before"], p["peak_bytes"]) for p in measured])
        result["check_after"] = check_estimates([(p["estimate_after"], p["peak_bytes"]) for p in measured])
    else:
        result["fit"] = None
        result["memory"] = "not measured (no CUDA device)"
    result["costs"] = reference_costs(fam, meter, config.costs.families.get(name))
    return result


def reference_costs(fam: Family, meter: Meter, ref: FamilyCost | None) -> dict[str, Any] | None:
    """Seconds for costs.toml: one and two images at the family's reference size (the size its job_s means)."""
    if ref is None:
        return None
    cls = type(fam)
    side = int(ref.ref_pixels ** 0.5) // cls.size_multiple * cls.size_multiple
    width, height = (1280, 704) if ref.ref_frames > 1 else (side, side)
    frames = cls.valid_frames(ref.ref_frames) if issubclass(cls, VideoFamily) else 0
    if not meter.cuda:  # a CPU cannot render full size in reasonable time; the demo sizes say little anyway
        width, height = 64, 64
        frames = cls.valid_frames(9) if frames else 0
    one = render(fam, params_for(cls, GridPoint(width, height, 1, frames)), meter)
    two = render(fam, params_for(cls, GridPoint(width, height, 2, frames)), meter) if not frames else None
    job_s = one["around_steps_s"] + ref.ref_steps * one["step_s"]
    marginal = (two["step_s"] / one["step_s"] - 1) if two and one["step_s"] > 0 else 1.0
    return {"size": f"{width}x{height}", "frames": frames, "job_s": round(job_s, 2),
            "batch_marginal": round(min(1.0, max(0.0, marginal)), 3),
            "activation_gb": None if one["peak_bytes"] is None else round(one["peak_bytes"] / 1e9, 2)}


def weights_kind(folder: Path) -> str:
    """'random full-size' for a weights.full_size build at full depth, 'real' for pulled weights, else what it is."""
    marker = folder / RANDOM_MARKER
    if marker.is_file():
        depth = json.loads(marker.read_text()).get("depth")
        return "random full-size" if depth is None else f"random full-width, depth {depth} (a shape check)"
    return "real" if real_weights_ready(folder) else "unverified folder"


def device_slug(device: str) -> tuple[str, str]:
    """(human name, folder name) of the device."""
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"cpu ({platform.processor() or platform.machine()})"
    return name, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_configs(results: list[dict[str, Any]], device_name: str, config_dir: Path) -> list[str]:
    """Put fitted coefficients and measured seconds into the config dir; returns what changed, one line each."""
    memory_path, costs_path = config_dir / "memory.toml", config_dir / "costs.toml"
    note = f"calibrated on {device_name}, {datetime.now(UTC):%Y-%m-%d}"
    memory, costs, changed = memory_path.read_text(), costs_path.read_text(), []
    for r in results:
        name, fit, ref = r["family"], r.get("fit"), r.get("costs")
        if fit:
            vae_key = "vae_bytes_per_voxel" if any(p["frames"] for p in r["points"]) else "vae_bytes_per_pixel"
            memory = set_toml_value(memory, name, "bytes_per_token", fit["bytes_per_token"], note)
            memory = set_toml_value(memory, name, vae_key, fit["vae_bytes"], note)
            changed.append(f"memory {name}: bytes_per_token {fit['bytes_per_token']}, {vae_key} {fit['vae_bytes']}")
        if ref and ref["activation_gb"] is not None:
            for key in ("job_s", "batch_marginal", "activation_gb"):
                costs = set_toml_value(costs, f"families.{name}", key, float(ref[key]), note)
            changed.append(f"costs {name}: job_s {ref['job_s']}, batch_marginal {ref['batch_marginal']}")
    rates = transfer_rates(results)
    if rates:
        for key, value in rates.items():
            costs = set_toml_value(costs, "transfer", key, value, note)
        changed.append(f"transfer: {rates}")
    memory_path.write_text(memory)
    costs_path.write_text(costs)
    return changed


def transfer_rates(results: list[dict[str, Any]]) -> dict[str, float]:
    """Median GB/s over the families loaded (from disk, and back from pinned RAM where measured)."""
    disk = [r["loads"]["bytes"] / 1e9 / r["loads"]["disk_s"] for r in results if r["loads"]["disk_s"] > 0]
    ram = [r["loads"]["bytes"] / 1e9 / r["loads"]["ram_s"] for r in results if r["loads"]["ram_s"]]
    out = {}
    if disk:
        out["disk_gb_per_s"] = round(statistics.median(disk), 2)
    if ram:
        out["ram_gb_per_s"] = round(statistics.median(ram), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="", help="comma-separated family names (default: every family)")
    parser.add_argument("--device", default="", help="cuda:N or cpu (default: cuda:0 when there is one)")
    parser.add_argument("--quick", action="store_true", help="tiny grid (the code path, not the figures)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the server's data dir (default: DARKROOM_DATA_DIR or the server's default)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/<device>)")
    parser.add_argument("--write-configs", action="store_true", help="write fitted values into the config dir (DARKROOM_CONFIG_DIR)")
    parser.add_argument("--weights-path", type=Path, default=None,
                        help="one family's folder to measure instead of the served weights (e.g. from weights.full_size)")
    parser.add_argument("--drop-page-cache", action="store_true",
                        help="drop the OS page cache before each load (needs root) so disk seconds are cold reads")
    args = parser.parse_args(argv)

    import torch

    from server.engine.worker import resolve_dtype
    from server.settings import Settings

    # The same settings the server reads (DARKROOM_* variables), so the weights found are the ones it would serve.
    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))

    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    wanted = [f for f in args.families.split(",") if f] or sorted(FAMILIES)
    unknown = sorted(set(wanted) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(sorted(FAMILIES))}")
    config = DarkroomConfig.load(settings.engine.config_dir)
    by_family = {e.family: e for e in config.manifest.values()}
    if args.weights_path and len(wanted) != 1:
        parser.error("--weights-path names one family's folder: give exactly one --families")
    meter, results, kinds = Meter(device), [], {}
    for name in wanted:
        if args.weights_path:
            path, kind = args.weights_path, weights_kind(args.weights_path)
        else:
            where = locate(by_family[name], settings.files.resolved_weights_dir, settings.files.demo_weights_dir, settings.engine.demo)
            if where is None:
                print(f"skip {name}: no weights (`darkroom weights pull {by_family[name].name}`, `weights demo`, or "
                      "`python -m weights.full_size` with --weights-path)")
                continue
            path, kind = where.path, "demo" if where.demo else "real"
        kinds[name] = kind
        fam = FAMILIES[name](path, device, resolve_dtype(settings.engine.dtype, device))
        weights = sum(c.bytes for c in fam.components())
        if meter.cuda and weights > 0.9 * torch.cuda.get_device_properties(torch.device(device)).total_memory:
            # Offloaded runs measure the offload, not the formula; a bigger GPU calibrates this family.
            print(f"skip {name}: {weights / 1e9:.1f} GB of weights do not fit this device resident")
            continue
        print(f"{name}: {kind} weights from {path}", flush=True)
        results.append(calibrate_family(name, fam, args.quick, meter, config, args.drop_page_cache))
        del fam
        if meter.cuda:
            torch.cuda.empty_cache()
    device_name, slug = device_slug(device)
    report = {
        "device": device_name, "command": "python -m benchmarks.calibrate " + " ".join(argv or sys.argv[1:]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {p: version(p) for p in ("torch", "diffusers", "transformers")},
        "weights": kinds, "quick": args.quick, "transfer": transfer_rates(results), "families": results,
    }
    out_dir = args.out or ROOT / "benchmarks" / "results" / slug
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "calibration.json").write_text(json.dumps(report, indent=1))
    for r in results:
        check = r.get("check_after")
        print(f"  {r['family']:18} load {r['loads']['disk_s']:>7} s  " + (
            f"fit {r['fit']}  before {r['check_before']['worst_ratio']}  after {check['worst_ratio']}"
            if check else "memory not measured"))
    print(f"wrote {out_dir / 'calibration.json'}")
    if args.write_configs:
        measurable = {"real", "random full-size"}
        if set(kinds.values()) - measurable or args.quick or not meter.cuda:
            print("not writing configs/: demo or depth-capped weights, --quick or no CUDA give figures that describe "
                  "nothing real")
            return 2
        for line in write_configs(results, device_name, settings.engine.config_dir):
            print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
