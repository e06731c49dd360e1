"""Per-id cost on the tiny demo models, and what the tiled 4K pass saves in memory (by the families' estimates).

For every image id: one edit (one 256x256 source) at the id's default steps and guidance, lowest quality
tier; wall seconds of the HTTP round trip and the pipeline seconds the job records. Then, for every family
that can go past its native size: the activation estimate of a one-shot 4K render against the native pass
plus one refine tile (what the tiled path actually holds at once).

    python -m benchmarks.lineup_cpu
"""

from __future__ import annotations

import base64
import io
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from PIL import Image

from benchmarks.harness import ServerProcess, write_result
from pipelines.base import RenderParams, Task
from pipelines.registry import FAMILIES
from server.catalog import QUALITY_LONG_SIDE
from server.config import DarkroomConfig


def _source() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (90, 120, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def per_id_seconds() -> dict[str, dict[str, float | str]]:
    """Round trip and pipeline seconds per image id at its defaults."""
    catalog = DarkroomConfig.packaged().catalog
    out: dict[str, dict[str, float | str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc = ServerProcess(Path(tmp) / "data")
        try:
            proc.wait_ready(timeout=300)
            with proc.client() as client:
                for spec in catalog.specs():
                    quality = min(spec.quality, key=QUALITY_LONG_SIDE.__getitem__)
                    body = {"model": spec.id, "prompt": "make it dusk", "image_urls": [_source()], "quality": quality,
                            "seed": 1}
                    t0 = time.perf_counter()
                    r = client.post("/api/v1/images/generate", json=body)
                    r.raise_for_status()
                    view = r.json()
                    out[spec.id] = {"family": spec.family, "quality": quality,
                                    "steps": spec.defaults.num_inference_steps,
                                    "round_trip_s": round(time.perf_counter() - t0, 3),
                                    "pipeline_s": view["darkroom"]["timings"]["pipeline_s"]}
        finally:
            proc.stop()
    return out


def tiled_memory(config: DarkroomConfig) -> dict[str, dict[str, float]]:
    """GB of activations: one-shot 4K (16:9) vs the native pass and one 1024-px refine tile."""
    out = {}
    for name, fam in sorted(FAMILIES.items()):
        if not fam.supports_refine():
            continue
        four_k = RenderParams(task=Task.EDIT, prompt="p", width=4096, height=2304, num_images=1, seeds=(1,),
                              num_inference_steps=4, guidance_scale=1.0, strength=0.3, num_sources=1)
        scale = fam.native_max_long_side / 4096
        native = replace(four_k, width=fam.native_max_long_side, height=round(2304 * scale / 16) * 16)
        tile = replace(four_k, width=fam.refine_tile, height=fam.refine_tile, num_sources=0)
        coeffs = config.coefficients(name)
        out[name] = {"one_shot_4k_gb": round(fam.activation_bytes(four_k, 1, coeffs) / 1e9, 2),
                     "native_pass_gb": round(fam.activation_bytes(native, 1, coeffs) / 1e9, 2),
                     "refine_tile_gb": round(fam.activation_bytes(tile, 1, coeffs) / 1e9, 2)}
    return out


def main() -> None:
    seconds = per_id_seconds()
    memory = tiled_memory(DarkroomConfig.packaged())
    for mid, row in seconds.items():
        print(f"{mid:26} {row['family']:16} {row['quality']:>4} {row['steps']:>3} steps  "
              f"round trip {row['round_trip_s']:6.2f}s  pipeline {row['pipeline_s']:6.2f}s")
    for fam, row in memory.items():
        print(f"{fam:16} 4K one-shot {row['one_shot_4k_gb']:6.2f} GB  vs native pass {row['native_pass_gb']:5.2f} GB"
              f" / refine tile {row['refine_tile_gb']:5.2f} GB")
    out = write_result("cpu", "lineup_cpu", {"per_id": seconds, "tiled_4k_activation_estimates": memory,
                                             "note": "tiny random-weight demo models on CPU; defaults per id"})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
