"""What live previews cost: seconds per image with previews on vs off, per family, same render.

Each family renders the same request (demo weights unless --weights-dir) with and without a preview tap, the two
interleaved round by round so that load on the machine hits both alike; the figure is the median over rounds. The
previews run as the server makes them (pipelines/previews.py): every `--every` steps, at most one per
`--min-interval` seconds, `--max-side` px JPEGs encoded off the render thread; `--min-interval 0` is the worst case
(a preview at every eligible step). The projection is fitted before the rounds (once per loaded model, as in the
server), and its fitting time is reported apart. The target (issue 32) is at most 5 % on CPU with the tiny models.

    python -m benchmarks.previews [--rounds 7] [--size 256] [--steps 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipelines.base import Family, RenderSpec, Task
from pipelines.previews import PreviewOptions, PreviewTap
from pipelines.registry import family_class
from server.config import DarkroomConfig
from weights.demo import build_demo

FAMILY_WEIGHTS = {"sdxl": "sdxl-base-1.0", "flux-kontext": "flux1-kontext-dev", "flux2-klein": "flux2-klein-4b",
                  "qwen-image-edit": "qwen-image-edit-2511", "wan2.2-ti2v-5b": "wan2.2-ti2v-5b", "ltx2": "ltx-2"}


def _spec(fam: Family, size: int, steps: int) -> RenderSpec:
    task = Task.IMAGE_TO_VIDEO if Task.IMAGE_TO_VIDEO in fam.tasks else Task.EDIT if Task.EDIT in fam.tasks \
        else Task.GENERATE
    frames = 17 if task is Task.IMAGE_TO_VIDEO else 0
    params = replace(fam.warmup_params(task, size, size, frames), num_inference_steps=steps, prompt="a lighthouse")
    return RenderSpec(params, sources=(Image.new("RGB", (size, size), (40, 90, 160)),) * params.num_sources)


def _time(fam: Family, spec: RenderSpec, tap: PreviewTap | None) -> float:
    fam.preview_tap = tap
    started = time.perf_counter()
    try:
        fam.render(spec, lambda _k, _n: None)
        if tap is not None:
            tap.close()
    finally:
        fam.preview_tap = None
    return time.perf_counter() - started


def measure(name: str, folder: Path, size: int, steps: int, rounds: int, options: PreviewOptions) -> dict[str, Any]:
    """Median seconds per render with and without previews for one family."""
    fam = family_class(name)(folder, "cpu", torch.float32)
    fam.load()
    spec = _spec(fam, size, steps)
    main = next(iter(fam.pipelines.values()))
    projection = fam.projection(main)  # fitted once per loaded model, as the server does at the first preview
    _time(fam, spec, None)  # warm caches before timing either side
    off: list[float] = []
    on: list[float] = []
    made: list[int] = []
    for _ in range(rounds):
        off.append(_time(fam, spec, None))
        tap = PreviewTap(options, lambda _s, _t, _j: None)
        on.append(_time(fam, spec, tap))
        made.append(tap.made)
    off_s, on_s = statistics.median(off), statistics.median(on)
    return {"family": name, "render": f"{size}x{size}, {steps} steps" + (", 17 frames" if spec.params.num_frames
                                                                         else ""),
            "seconds_off": round(off_s, 4), "seconds_on": round(on_s, 4),
            "overhead_pct": round(100 * (on_s - off_s) / off_s, 2), "previews_per_render": statistics.median(made),
            "projection_fit_s": round(projection.fit_s, 3), "projection_r2": round(projection.r2, 3)}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.harness import write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=None, help="real weights (default: demo weights)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--min-interval", type=float, default=0.0)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--families", nargs="*", default=list(FAMILY_WEIGHTS))
    args = parser.parse_args(argv)
    options = PreviewOptions(every_steps=args.every, min_interval_s=args.min_interval, max_side=args.max_side)
    config = DarkroomConfig.packaged()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families:
            weights = FAMILY_WEIGHTS[name]
            folder = args.weights_dir / weights if args.weights_dir else build_demo(config.manifest[weights], Path(tmp))
            row = measure(name, folder, args.size, args.steps, args.rounds, options)
            rows.append(row)
            print(f"{name:18} {row['render']:28} off {row['seconds_off']:.3f} s  on {row['seconds_on']:.3f} s  "
                  f"{row['overhead_pct']:+.1f} %  ({row['previews_per_render']} previews, fit "
                  f"{row['projection_fit_s']} s, R^2 {row['projection_r2']})")
            if args.weights_dir is None:
                shutil.rmtree(folder, ignore_errors=True)
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0).replace(" ", "_")
    out = write_result(device, "previews", {
        "weights": "demo (tiny, random)" if args.weights_dir is None else str(args.weights_dir),
        "options": {"every_steps": args.every, "min_interval_s": args.min_interval, "max_side": args.max_side},
        "rounds": args.rounds, "statistic": "median seconds per render, previews on and off interleaved",
        "target": "overhead <= 5 % on CPU with the tiny models", "results": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
