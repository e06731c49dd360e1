"""darkroom against the diffusers script a studio would write, on the same weights, sizes, steps and seeds.

The script: load the pipeline once, call it in a loop, save PNGs. darkroom: the same N requests sent at once by
N concurrent clients to a running server (which batches them into shared pipeline calls and applies the id's
acceleration preset). Wall time is from the first request to the last image in hand, pipeline loading excluded
on both sides. Text-to-image and edits; one request alone as well (darkroom must never be slower there).

    python -m benchmarks.side_by_side [--n 8] [--size 512] [--steps 28] [--repeats 5]

Both sides are warm (the script's pipeline loaded once and called once before timing, as in a long-running
script; the server's first call made) and the rounds interleave them; each figure is the median of `--repeats`
rounds (single requests: of 3 samples per round), because on a small shared CPU one run of a few seconds swings
by a fifth either way.

On CPU it runs the demo weights of FLUX.1 Kontext. Both ids are measured: flux-kontext-pro (its fast preset:
batching + step cache) and flux-kontext-max with the same steps (batching alone; its output differs from the script's
only by the VAE's channels-last rounding).
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from tqdm import tqdm

from benchmarks.harness import ServerProcess, write_result
from server.config import DarkroomConfig

SINGLE_SAMPLES = 3  # single-request samples per round (each figure is the median of all of them)
SOURCE_COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200), (200, 40, 200),
                  (120, 120, 120), (250, 140, 20)]


def _png(colour: tuple[int, int, int], size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def requests(n: int, size: int, edit: bool) -> list[dict[str, Any]]:
    """The N requests both sides run: prompts and seeds differ, and for edits the source image too."""
    return [{"prompt": f"a lighthouse at dusk, variation {i}", "seed": 100 + i,
             "source": _png(SOURCE_COLOURS[i % len(SOURCE_COLOURS)], size) if edit else None} for i in range(n)]


def load_plain(weights: Path) -> Any:
    """The script's pipeline, loaded once as the script would."""
    import torch
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(weights, dtype=torch.float32, use_safetensors=True,
                                               local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_loop(pipe: Any, reqs: list[dict[str, Any]], size: int, steps: int, out: Path) -> float:
    """The script: call in a loop, save PNGs. Seconds for the loop."""
    import torch

    started = time.perf_counter()
    for i, r in enumerate(reqs):
        kwargs: dict[str, Any] = {}
        if r["source"] is not None:
            kwargs["image"] = Image.open(io.BytesIO(r["source"])).convert("RGB")
        image = pipe(prompt=r["prompt"], height=size, width=size, num_inference_steps=steps, guidance_scale=2.5,
                     generator=torch.Generator("cpu").manual_seed(r["seed"]), max_area=size * size,
                     _auto_resize=False, **kwargs).images[0]
        image.save(out / f"plain-{i}.png")
    return time.perf_counter() - started


def darkroom(server: ServerProcess, model: str, reqs: list[dict[str, Any]], size: int, steps: int) -> float:
    """The same requests from len(reqs) concurrent clients; seconds until the last image is downloaded."""
    quality = {512: "512", 1024: "1K"}[size]

    def one(r: dict[str, Any]) -> None:
        body: dict[str, Any] = {"model": model, "prompt": r["prompt"], "seed": r["seed"], "quality": quality,
                                "aspect_ratio": "1:1", "num_inference_steps": steps}
        if r["source"] is not None:
            body["image_urls"] = ["data:image/png;base64," + base64.b64encode(r["source"]).decode()]
        with httpx.Client(base_url=server.base_url, timeout=600) as c:
            got = c.post("/api/v1/images/generate", json=body)
            got.raise_for_status()
            c.get(got.json()["images"][0]["url"]).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(len(reqs)) as pool:
        list(pool.map(one, reqs))
    return time.perf_counter() - started


def accelerations(server: ServerProcess, models: tuple[str, ...]) -> dict[str, Any]:
    """What each id runs with, as the server reports it (the preset, and what its worker applied)."""
    listed = httpx.get(f"{server.base_url}/api/v1/images/models", timeout=30).json()["models"]
    return {m["id"]: m["acceleration"] for m in listed if m["id"] in models}


def main() -> None:
    from weights.demo import build_demo

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, choices=(512, 1024))
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each figure is the median")
    args = parser.parse_args()

    models = ("flux-kontext-max", "flux-kontext-pro")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        demo = tmp_path / "demo"
        weights = build_demo(DarkroomConfig.packaged().manifest["flux1-kontext-dev"], demo)
        server = ServerProcess(tmp_path / "data", demo, env={
            "DARKROOM_MODELS": ",".join(models), "DARKROOM_MAX_BATCH": str(args.n), "DARKROOM_BATCH_MAX_WAIT_S": "0"})
        try:
            server.wait_ready(timeout=300)
            accel = accelerations(server, models)
            pipe = load_plain(weights)
            bar = tqdm(total=2 * args.repeats, desc="side by side", unit="round", disable=None)
            for edit in (False, True):
                reqs = requests(args.n, args.size, edit)
                kind = "edit" if edit else "text-to-image"
                # Both sides warm (first-call costs paid once, as in a long-running script and a running server).
                darkroom(server, models[0], reqs[:1], args.size, 2)
                plain_loop(pipe, reqs[:1], args.size, 2, tmp_path)
                # Rounds interleave the sides, so a slow spell of this shared machine falls on both.
                times: dict[str, list[float]] = {}
                for _ in range(args.repeats):
                    times.setdefault("plain", []).append(plain_loop(pipe, reqs, args.size, args.steps, tmp_path))
                    for model in models:
                        times.setdefault(model, []).append(darkroom(server, model, reqs, args.size, args.steps))
                    # One request lasts under a second here, so it is sampled SINGLE_SAMPLES times per round, each
                    # sample running all three sides back to back.
                    for _ in range(SINGLE_SAMPLES):
                        times.setdefault("plain_one", []).append(
                            plain_loop(pipe, reqs[:1], args.size, args.steps, tmp_path))
                        for model in models:
                            times.setdefault(model + "_one", []).append(
                                darkroom(server, model, reqs[:1], args.size, args.steps))
                    bar.update(1)
                med = {k: statistics.median(v) for k, v in times.items()}
                for model in models:
                    plain_s, plain_one, ours, ours_one = med["plain"], med["plain_one"], med[model], med[model + "_one"]
                    row = {"kind": kind, "model": model, "n": args.n, "size": args.size, "steps": args.steps,
                           "repeats": args.repeats, "plain_loop_s": round(plain_s, 2), "darkroom_s": round(ours, 2),
                           "speedup": round(plain_s / ours, 2), "single_plain_s": round(plain_one, 3),
                           "single_darkroom_s": round(ours_one, 3), "single_speedup": round(plain_one / ours_one, 2),
                           "runs_s": {"plain": [round(t, 2) for t in times["plain"]],
                                      "darkroom": [round(t, 2) for t in times[model]],
                                      "single_plain": [round(t, 3) for t in times["plain_one"]],
                                      "single_darkroom": [round(t, 3) for t in times[model + "_one"]]},
                           "acceleration": accel.get(model)}
                    rows.append(row)
                    tqdm.write(f"{kind:13} {model:17} {args.n} concurrent: plain {plain_s:6.2f} s  "
                               f"darkroom {ours:6.2f} s x{row['speedup']:.2f}   one request: plain {plain_one:5.2f} s  "
                               f"darkroom {ours_one:5.2f} s x{row['single_speedup']:.2f}")
        finally:
            server.stop()
    out = write_result("cpu", "side_by_side", {"results": rows, "note": (
        "flux-kontext-max runs without a step cache, so its outputs equal the script's but for the VAE's "
        "channels-last rounding; flux-kontext-pro adds its fast preset's step cache (each row's acceleration)")})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
