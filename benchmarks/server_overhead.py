"""Server overhead: HTTP round trip minus pipeline time, over N sync requests to tiny Kontext.

Overhead covers everything the server adds around the pipeline call: parsing,
validation, image decode, writing inputs, the SQLite commit, waking the worker,
encoding and writing the output, and the response. Target: p50 <= 15 ms.

Random demo weights output pure noise, the worst case for PNG (incompressible:
~37 ms to encode at 512x512 on this CPU), so the script runs each output format
and also reports the overhead without the output save.

    python -m benchmarks.server_overhead [--requests 50] [--formats png,jpeg] [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from benchmarks.harness import ServerProcess, percentile, write_result

TARGET_P50_MS = 15.0


def measure(client: httpx.Client, n: int, quality: str, fmt: str) -> list[dict[str, float]]:
    """Send `n` sync edits; per request: round trip, pipeline, and the difference, in ms."""
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (90, 120, 200)).save(buf, "PNG")
    src = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = {"model": "flux-kontext-pro", "prompt": "overhead", "image_urls": [src], "quality": quality,
            "num_inference_steps": 2, "output_format": fmt}
    client.post("/api/v1/images/generate", json=body).raise_for_status()  # warm-up (first-call allocations)
    rows = []
    for i in range(n):
        t0 = time.perf_counter()
        r = client.post("/api/v1/images/generate", json={**body, "seed": i})
        rtt = (time.perf_counter() - t0) * 1000
        r.raise_for_status()
        timings = r.json()["darkroom"]["timings"]
        pipeline = timings["pipeline_s"] * 1000
        save = timings["save_s"] * 1000
        rows.append({"rtt_ms": rtt, "pipeline_ms": pipeline, "overhead_ms": rtt - pipeline,
                     "overhead_without_save_ms": rtt - pipeline - save, "save_ms": save,
                     "queued_ms": timings["queued_s"] * 1000})
    return rows


KEYS = ("overhead_ms", "overhead_without_save_ms", "rtt_ms", "pipeline_ms", "save_ms", "queued_ms")


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """p50 / p95 / mean of every column."""
    return {key: {"p50": round(percentile([r[key] for r in rows], 50), 2),
                  "p95": round(percentile([r[key] for r in rows], 95), 2),
                  "mean": round(statistics.fmean(r[key] for r in rows), 2)} for key in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--quality", default="512")
    parser.add_argument("--formats", default="png,jpeg")
    parser.add_argument("--url", default=None, help="An already running darkroom (loopback); default: start one.")
    args = parser.parse_args()
    proc = None
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.url is None:
            proc = ServerProcess(Path(tmp) / "data")
            proc.wait_ready(timeout=300)
            base = proc.base_url
        else:
            base = args.url
        try:
            with httpx.Client(base_url=base, timeout=120) as client:
                for fmt in args.formats.split(","):
                    rows = measure(client, args.requests, args.quality, fmt)
                    summary = summarise(rows)
                    results[fmt] = {"summary": summary, "target_met": summary["overhead_ms"]["p50"] <= TARGET_P50_MS,
                                    "overhead_samples_ms": [round(r["overhead_ms"], 2) for r in rows]}
        finally:
            if proc is not None:
                proc.stop()
    for fmt, res in results.items():
        summary = res["summary"]
        print(f"{args.requests} sync requests, quality {args.quality}, output {fmt}")
        for key, s in summary.items():  # type: ignore[union-attr]
            print(f"  {key:25} p50 {s['p50']:8.2f}  p95 {s['p95']:8.2f}  mean {s['mean']:8.2f}")
        print(f"  overhead p50 vs target {TARGET_P50_MS} ms: {'MET' if res['target_met'] else 'MISSED'}")
    out = write_result("cpu", "server_overhead", {"requests": args.requests, "quality": args.quality,
                                                  "target_p50_ms": TARGET_P50_MS, "by_format": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
