"""Seconds per job at k = 1, 2, 4, 8 GPUs of one node: FLUX.1 Kontext 1024² and Wan 2.2 TI2V-5B 720p, spread by
darkroom's gangs (server/engine/gang_worker.py) exactly as the server runs them.

    python -m benchmarks.gang_bench --tiny --gpus 1,2        # dry run: tiny demo weights, gloo ranks on this CPU
    python -m benchmarks.gang_bench --results-dir OUT        # a multi-GPU machine: full-size random weights
                                                             # (weights/full_size.py), every k up to its GPUs

Full-size weights have random values (no downloads on the lent machines): the seconds are those of the real
shapes; the pictures are noise. k = 1 runs on darkroom's single-device worker, k > 1 on a gang; each k gets a
warm-up render (forming the gang and loading the model on every rank) and `--reps` timed ones; the JSON keeps the
median, the plan that ran and the speed-up over k = 1. It is rewritten after each k, so a run stopped at its time
limit keeps what it measured. Replace configs/parallel.toml's `speedup` lines with the measured ones.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# (family, weights entry, full-size request, tiny request): width, height, frames, steps, guidance
CASES = {
    "flux-kontext": ("flux1-kontext-dev", (1024, 1024, 0, 28, 2.5), (64, 64, 0, 3, 2.5)),
    "wan2.2-ti2v-5b": ("wan2.2-ti2v-5b", (1280, 704, 81, 20, 5.0), (64, 64, 9, 3, 5.0)),
}


def _source(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(out, "PNG")
    return out.getvalue()


def _work(family: str, weights: str, size: tuple[int, int, int, int, float]) -> Any:
    from pipelines.base import RenderParams, Task
    from server.engine.work import RenderWork

    width, height, frames, steps, guidance = size
    video = frames > 0
    params = RenderParams(Task.IMAGE_TO_VIDEO if video else Task.EDIT, "a lighthouse at dusk, waves", width, height,
                          1, (11,), steps, guidance, 1.0, num_sources=1, num_frames=frames, fps=24.0 if video else 0.0)
    return RenderWork(weights, family, params, sources=(_source(width, height),))


def _weights(family: str, weights: str, tiny: bool, scratch: Path) -> Path:
    from server.config import DarkroomConfig
    from weights.demo import build_demo

    entry = DarkroomConfig.packaged().manifest[weights]
    demo = build_demo(entry, scratch / "demo")
    if tiny:
        return demo
    from weights.full_size import build_full_size

    return build_full_size(family, demo, scratch / "full" / weights, device="cuda:0")


def measure(family: str, gpus: list[int], tiny: bool, reps: int, scratch: Path, out: dict[str, Any],
            save: Any) -> None:
    """Every k of `gpus` for one family, into out['results'][family]."""
    import torch

    from server.config import DarkroomConfig
    from server.engine.gang_worker import GangWorker
    from server.engine.work import Completed
    from server.engine.worker import Worker
    from weights.locate import LocatedWeights

    config = DarkroomConfig.packaged()
    weights, full, small = CASES[family]
    path = _weights(family, weights, tiny, scratch)
    located = {weights: LocatedWeights(config.manifest[weights], path, tiny)}
    cuda = torch.cuda.is_available() and not tiny
    dtype = torch.bfloat16 if cuda else torch.float32
    work = _work(family, weights, small if tiny else full)
    rows: dict[str, Any] = {}
    out["results"][family] = {"request": dict(zip(("width", "height", "frames", "steps", "guidance"),
                                                   small if tiny else full, strict=True)), "by_gpus": rows}
    for k in gpus:
        devices = tuple(f"cuda:{i}" for i in range(k)) if cuda else ("cpu",) * k
        solo = Worker("w0", devices[0], dtype, located, config.memory)
        handle: Any = solo if k == 1 else GangWorker(
            f"gang{k}-0", devices, tuple(f"w{i}" for i in range(k)), str(dtype).removeprefix("torch."), located,
            config.parallel, solo.footprint, config.memory)
        try:
            started = time.perf_counter()
            first = handle.render(work, lambda _d, _t: None)
            if not isinstance(first, Completed):
                rows[str(k)] = {"error": f"{type(first).__name__}: {getattr(first, 'detail', '')}"}
                save()
                continue
            warm_s = time.perf_counter() - started
            times = []
            for _ in range(reps):
                done = handle.render(work, lambda _d, _t: None)
                assert isinstance(done, Completed), done
                times.append(done.pipeline_s)
            median = statistics.median(times)
            rows[str(k)] = {"seconds": round(median, 3), "all_s": [round(t, 3) for t in times],
                            "warm_up_s": round(warm_s, 1), "plan": done.runtime.get("parallel"),
                            "devices": list(devices)}
            base = rows.get("1", {}).get("seconds")
            if base and k > 1:
                rows[str(k)]["speedup"] = round(base / median, 2)
            print(f"{family} k={k}: {median:.3f} s (plan {done.runtime.get('parallel')})", flush=True)
        finally:
            if k > 1:
                handle.release()
            del solo, handle
            if cuda:
                torch.cuda.empty_cache()
        save()


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(CASES))
    parser.add_argument("--gpus", default="1,2,4,8", help="gang sizes to measure (those above the GPU count are "
                        "skipped)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny demo weights and sizes, gloo ranks on the CPU")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results" / "cpu")
    args = parser.parse_args(argv)
    have = torch.cuda.device_count() if torch.cuda.is_available() and not args.tiny else 2
    gpus = [k for k in (int(x) for x in args.gpus.split(",")) if k <= have]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.tiny else "cpu (gloo ranks)"
    out: dict[str, Any] = {
        "command": "python -m benchmarks.gang_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device, "gpus_available": have, "weights": "tiny demo" if args.tiny else "full-size random",
        "versions": {p: version(p) for p in ("torch", "diffusers", "transformers")},
        "date": time.strftime("%Y-%m-%d"), "results": {}}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / ("gang_tiny.json" if args.tiny else "gang.json")

    def save() -> None:
        path.write_text(json.dumps(out, indent=1))

    with tempfile.TemporaryDirectory() as scratch:
        for family in args.families.split(","):
            measure(family, gpus, args.tiny, args.reps, Path(scratch), out, save)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
