"""Added latency of each provider dialect over the native API for the same job (tiny models, CPU).

For every synchronous dialect (OpenAI, fal sync, Replicate `Prefer: wait`, Gemini), N interleaved pairs of
requests: the dialect and the native `POST /api/v1/images/generate` for the same local model, size and steps.
Each request's server overhead is its round trip minus the pipeline seconds its job recorded, so pipeline noise
cancels, and so does the output save (the same PNG write on both paths, and noisy with random-weight noise
images); the dialect's added latency is p50(dialect overhead) - p50(native overhead). OpenAI and Gemini return
images inline as base64 (their wire format), so their figure includes encoding, sending and parsing that
payload (random-weight noise PNGs are incompressible: ~0.8 MB at 512 px, ~3 MB at 1K); `openai_url` is the
same OpenAI call with response_format=url, i.e. the translation alone. With --to-bytes the inline dialects are
compared with the native call *plus the GETs of its image URLs*, i.e. until the client holds the image bytes. For Black Forest Labs
(asynchronous), the submit call and one get_result poll are compared with the native submit and task GET.
Target: <= 5 ms per dialect.

    python -m benchmarks.dialect_overhead [--requests 50]
"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from benchmarks.harness import ServerProcess, percentile, write_result

TARGET_MS = 5.0


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (128, 128), (90, 120, 200)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


# dialect -> (native body, dialect path, dialect body, headers, task id from the dialect's answer)
def cases(png: str) -> dict[str, tuple[dict[str, Any], str, dict[str, Any], dict[str, str], Callable[[Any], str]]]:
    data_url = f"data:image/png;base64,{png}"
    return {
        "openai": ({"model": "vertex/nano-banana-flash", "prompt": "p", "quality": "512", "num_inference_steps": 1,
                    "aspect_ratio": "1:1"},
                   "/v1/images/generations",
                   {"model": "gpt-image-1-mini", "prompt": "p", "size": "512x512", "quality": "low"},
                   {}, lambda j: j["darkroom"]["task_id"]),
        # The same with URLs instead of inline base64: the translation alone.
        "openai_url": ({"model": "vertex/nano-banana-flash", "prompt": "p", "quality": "512", "num_inference_steps": 1,
                        "aspect_ratio": "1:1"},
                       "/v1/images/generations",
                       {"model": "gpt-image-1-mini", "prompt": "p", "size": "512x512", "quality": "low",
                        "response_format": "url"},
                       {}, lambda j: j["darkroom"]["task_id"]),
        "fal": ({"model": "nano-banana-2", "prompt": "p", "quality": "1K", "num_inference_steps": 1,
                 "image_urls": [data_url]},
                "/sync/fal-ai/nano-banana-2/edit",
                {"prompt": "p", "image_urls": [data_url], "resolution": "1K", "num_inference_steps": 1},
                {}, lambda j: j["darkroom"]["task_id"]),
        "replicate": ({"model": "nano-banana-2", "prompt": "p", "quality": "1K", "image_urls": [data_url]},
                      "/v1/models/google/nano-banana-2/predictions",
                      {"input": {"prompt": "p", "image_input": [data_url], "resolution": "1K"}},
                      {"Prefer": "wait"}, lambda j: j["id"]),
        "gemini": ({"model": "nano-banana-2", "prompt": "p", "quality": "1K", "image_urls": [data_url]},
                   "/v1beta/models/gemini-3.1-flash-image-preview:generateContent",
                   {"contents": [{"parts": [{"text": "p"}, {"inline_data": {"mime_type": "image/png", "data": png}}]}],
                    "generationConfig": {"imageConfig": {"imageSize": "1K"}}},
                   {}, lambda j: j["responseId"]),
    }


def _overhead(client: httpx.Client, method: str, path: str, body: dict[str, Any], headers: dict[str, str],
              task_of: Callable[[Any], str], fetch_images: bool = False) -> float:
    t0 = time.perf_counter()
    r = client.request(method, path, json=body, headers=headers)
    if fetch_images:
        # Until the client holds the image bytes: a URL answer needs its GETs too (inline answers already do).
        for image in r.json().get("images", []):
            client.get(image["url"]).raise_for_status()
    rtt = (time.perf_counter() - t0) * 1000
    r.raise_for_status()
    timings = client.get(f"/api/v1/tasks/{task_of(r.json())}").json()["darkroom"]["timings"]
    # The output save (PNG of random noise, ~10-200 ms and noisy) is the same work on both paths: left out.
    return rtt - (timings["pipeline_s"] + timings["save_s"]) * 1000


def measure_sync(client: httpx.Client, n: int, only: set[str] | None = None,
                 to_bytes: bool = False) -> dict[str, dict[str, float]]:
    out = {}
    for name, (native, path, body, headers, task_of) in cases(_png_b64()).items():
        if only and name not in only:
            continue
        native_ms, dialect_ms = [], []
        for i in range(n + 1):  # the first pair warms up both paths
            a = _overhead(client, "POST", "/api/v1/images/generate", {**native, "seed": i}, {},
                          lambda j: j["task_id"], fetch_images=to_bytes)
            b = _overhead(client, "POST", path, body, headers, task_of)
            if i:
                native_ms.append(a)
                dialect_ms.append(b)
        added = percentile(dialect_ms, 50) - percentile(native_ms, 50)
        out[name] = {"native_overhead_p50_ms": round(percentile(native_ms, 50), 2),
                     "dialect_overhead_p50_ms": round(percentile(dialect_ms, 50), 2),
                     "added_p50_ms": round(added, 2), "meets_target": added <= TARGET_MS}
        print(f"{name:10} native {out[name]['native_overhead_p50_ms']:7.2f} ms  dialect "
              f"{out[name]['dialect_overhead_p50_ms']:7.2f} ms  added {added:6.2f} ms")
    return out


def measure_bfl(client: httpx.Client, n: int) -> dict[str, float]:
    """Submit and one poll, BFL vs native (no render time in either: both answer before the job runs)."""
    png = _png_b64()
    rows: dict[str, list[float]] = {"native_submit": [], "bfl_submit": [], "native_get": [], "bfl_get": []}
    for i in range(n + 1):
        t0 = time.perf_counter()
        native = client.post("/api/v1/images/generate", json={"model": "flux-kontext-pro", "prompt": "p",
                                                               "quality": "512", "celery": True,
                                                               "num_inference_steps": 1,
                                                               "image_urls": [f"data:image/png;base64,{png}"]})
        t1 = time.perf_counter()
        bfl = client.post("/v1/flux-kontext-pro", json={"prompt": "p", "input_image": png, "steps": 1})
        t2 = time.perf_counter()
        client.get(f"/api/v1/tasks/{native.json()['task_id']}")
        t3 = time.perf_counter()
        client.get("/v1/get_result", params={"id": bfl.json()["id"]})
        t4 = time.perf_counter()
        if i:
            for key, value in zip(rows, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                rows[key].append(value * 1000)
    p50 = {k: percentile(v, 50) for k, v in rows.items()}
    out = {"submit_added_p50_ms": round(p50["bfl_submit"] - p50["native_submit"], 2),
           "poll_added_p50_ms": round(p50["bfl_get"] - p50["native_get"], 2)}
    print(f"bfl        submit added {out['submit_added_p50_ms']:6.2f} ms, poll added {out['poll_added_p50_ms']:6.2f} ms")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--to-bytes", action="store_true",
                        help="inline-image dialects vs the native call plus its image GETs (client holds the bytes)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        proc = ServerProcess(Path(tmp) / "data")
        try:
            proc.wait_ready(timeout=600)
            with proc.client() as client:
                if args.to_bytes:
                    sync = measure_sync(client, args.requests, {"openai", "gemini"}, to_bytes=True)
                    bfl = None
                else:
                    sync = measure_sync(client, args.requests)
                    bfl = measure_bfl(client, args.requests)
        finally:
            proc.stop()
    name = "dialect_overhead_to_bytes" if args.to_bytes else "dialect_overhead"
    path = write_result("cpu", name, {
        "command": f"python -m benchmarks.dialect_overhead --requests {args.requests}"
                   + (" --to-bytes" if args.to_bytes else ""),
        "target_added_p50_ms": TARGET_MS, "requests": args.requests, "sync": sync, "bfl": bfl,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
