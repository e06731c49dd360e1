"""What each weight variant costs in quality: the same requests at the same seeds per variant, against bf16.

For each image family's weights, render an edit at every variant that loads on this machine (through the server's
own loader, pipelines/quantize.py) and compare with the unquantized render: PSNR and SSIM (luma, 8x8 windows),
plus the parameter bytes the loaded pipeline holds, the seconds per render and (on CUDA) the peak GB: on a GPU with
full-size weights (`python -m weights.full_size ...` builds random ones) those are the per-variant figures
configs/cards.toml's speeds should be replaced with. LPIPS is reported when the `lpips` package is importable with
its weights already cached (it needs torchvision and downloads AlexNet at first use; never from here).

    python -m benchmarks.quant_quality [--weights-dir DIR] [--size 128] [--seeds 3] [--steps 4]

Without --weights-dir it runs on demo weights built on the fly: the loading paths and the byte counts are real,
but the numbers measure how a random network carries quantization noise, not how a trained one looks; the quality
floors in configs/acceleration.toml rest on the published figures (see the README's "Which GPU do I need?").
On demo weights the gguf package writes Q8_0 itself but no K-quants, so Q5_K and Q4_K are measured with files in
the legacy Q5_0 and Q4_0 block formats (same bits per weight, simpler scales), named as such in the output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.step_cache_quality import psnr, ssim
from pipelines.acceleration import AccelerationRefused, LoadProfile
from pipelines.base import RenderParams, RenderSpec, Task
from pipelines.quantize import parameter_bytes
from pipelines.registry import family_class
from pipelines.variants import VARIANTS
from server.config import DarkroomConfig
from weights.demo import build_demo
from weights.manifest import VARIANTS_FOLDER

FAMILY_WEIGHTS = ("flux1-kontext-dev", "flux2-klein-4b", "qwen-image-edit-2511", "sdxl-base-1.0")
MEASURED = ("bf16", "int8_weight", "fp8_dynamic", "fp8_weight", "nf4", "gguf_q8_0", "gguf_q5_k", "gguf_q4_k")
# Demo stand-ins for the K-quants the gguf package cannot write: the legacy format of the same bits per weight.
DEMO_STAND_INS = {"gguf_q5_k": "Q5_0", "gguf_q4_k": "Q4_0"}


def _write_stand_ins(config: DarkroomConfig, weights: str, folder: Path) -> dict[str, str]:
    """Write the demo's K-quant stand-ins where the manifest declares the variant; {variant: written format}."""
    import diffusers

    from weights.demo_variants import write_gguf
    from weights.locate import LOCK_FILE

    entry = config.manifest[weights]
    index = json.loads((folder / "model_index.json").read_text())
    written = {}
    for variant, fmt in DEMO_STAND_INS.items():
        if variant not in entry.variants:
            continue
        target = folder / VARIANTS_FOLDER / variant
        files = entry.variants[variant].files
        for component, rel in files.items():
            module = getattr(diffusers, index[component][1]).from_pretrained(folder, subfolder=component,
                                                                              torch_dtype=torch.float32)
            write_gguf(module.state_dict(), target / rel, fmt)
        (target / LOCK_FILE).write_text(json.dumps({"demo": True, "written_as": fmt, "components": files}))
        written[variant] = fmt
    return written


def _render(family: Any, folder: Path, variant: str, device: str, dtype: torch.dtype, size: int, steps: int,
            seeds: int) -> tuple[list[np.ndarray], int, dict[str, float | None]]:
    """The renders of every seed, the loaded pipeline's parameter bytes, and timings: the median seconds per
    render after the first (which pays one-off set-up) and, on CUDA, the peak GB allocated while rendering."""
    fam = family(folder, device, dtype, LoadProfile(variants=(variant,), variant_pinned=True))
    fam.load()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    main = fam.pipelines[next(iter(fam.pipelines))]
    nbytes = sum(parameter_bytes(m) for m in {id(m): m for m in main.components.values()
                                                  if hasattr(m, "parameters")}.values())
    task = Task.EDIT if Task.EDIT in family.tasks else Task.GENERATE
    images, seconds = [], []
    for seed in range(seeds):
        source = Image.new("RGB", (size, size), (40 + 60 * seed, 120, 200 - 50 * seed))
        params = RenderParams(task, "the same subject, golden hour light", size, size, 1, (seed,), steps, 3.5, 1.0,
                              num_sources=1 if task is Task.EDIT else 0, source_size=(size, size))
        started = time.perf_counter()
        result = fam.render(RenderSpec(params, sources=(source,) if task is Task.EDIT else ()), lambda *_: None, {})
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        images.append(np.asarray(result.images[0]))
    timings = {"seconds_per_image": round(float(np.median(seconds[1:] or seconds)), 3),
               "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None}
    return images, nbytes, timings


def measure(config: DarkroomConfig, weights: str, folder: Path, size: int, steps: int, seeds: int,
            stand_ins: dict[str, str]) -> list[dict[str, Any]]:
    """Every variant of one weights entry against its bf16 render."""
    family = family_class(config.manifest[weights].family)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    side = size // family.size_multiple * family.size_multiple
    reference, ref_bytes, ref_timings = _render(family, folder, "bf16", device, dtype, side, steps, seeds)
    rows = []
    declared = config.manifest[weights].variants
    for variant in MEASURED:
        if VARIANTS[variant].from_files and variant not in declared:
            continue  # no files of it exist for these weights
        row: dict[str, Any] = {"weights": weights, "variant": variant, "written_as": stand_ins.get(variant)}
        try:
            images, nbytes, timings = (reference, ref_bytes, ref_timings) if variant == "bf16" else _render(
                family, folder, variant, device, dtype, side, steps, seeds)
        except AccelerationRefused as exc:
            rows.append({**row, "skipped": str(exc)})
            continue
        row.update(psnr_db=round(float(np.mean([min(psnr(a, b), 99.0) for a, b in zip(reference, images,
                                                                                       strict=True)])), 2),
                   ssim=round(float(np.mean([ssim(a, b) for a, b in zip(reference, images, strict=True)])), 4),
                   bytes=nbytes, bytes_vs_bf16=round(nbytes / ref_bytes, 3), lpips=None, **timings)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.harness import write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=None, help="real weights (default: demo weights)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    config = DarkroomConfig.packaged()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for weights in FAMILY_WEIGHTS:
            if args.weights_dir is not None:
                folder, stand_ins = args.weights_dir / weights, {}
            else:
                folder = build_demo(config.manifest[weights], Path(tmp))
                stand_ins = _write_stand_ins(config, weights, folder)
            for row in measure(config, weights, folder, args.size, args.steps, args.seeds, stand_ins):
                results.append(row)
                if "skipped" in row:
                    print(f"{weights:22} {row['variant']:12} skipped: {row['skipped']}")
                else:
                    print(f"{weights:22} {row['variant']:12} {row['written_as'] or '':5} PSNR {row['psnr_db']:6.2f} dB"
                          f"  SSIM {row['ssim']:.4f}  bytes x{row['bytes_vs_bf16']}  {row['seconds_per_image']} s"
                          + (f"  peak {row['peak_gb']} GB" if row["peak_gb"] is not None else ""))
            if args.weights_dir is None:
                shutil.rmtree(folder, ignore_errors=True)
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0).replace(" ", "_")
    out = write_result(device, "quant_quality", {
        "weights": "demo (tiny, random)" if args.weights_dir is None else str(args.weights_dir),
        "size": args.size, "steps": args.steps, "seeds": args.seeds,
        "reference": "the bf16 variant at the serving dtype (float32 on a CPU)",
        "lpips": "not measured: the lpips package needs torchvision and downloads AlexNet weights at first use",
        "results": results})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
