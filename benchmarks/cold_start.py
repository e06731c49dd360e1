"""Cold start: seconds from `darkroom serve` to /ready and to the first 200 of a generate call (demo models).

Also times the first /health answer: the server listens before the worker
has imported diffusers and loaded the models, which is most of the wait.

Two runs: 'fresh' starts on an empty data dir (demo weights are built first),
'warm-disk' restarts on the same data dir (weights already on disk).

    python -m benchmarks.cold_start [--runs 3]
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from benchmarks.harness import ServerProcess, write_result


def _source() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (90, 120, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def one_start(data_dir: Path) -> dict[str, float]:
    """Start a server on `data_dir`, time /ready and the first successful generate, stop it."""
    proc = ServerProcess(data_dir)
    try:
        health_s = proc.wait_listening(timeout=300)
        ready_s = proc.wait_ready(timeout=300)
        body = {"model": "flux-kontext-pro", "prompt": "first", "image_urls": [_source()], "quality": "512",
                "num_inference_steps": 4, "seed": 1}
        with proc.client() as client:
            r = client.post("/api/v1/images/generate", json=body)
            first_200_s = time.perf_counter() - proc.started
            assert r.status_code == 200, r.text
        return {"health_s": round(health_s, 3), "ready_s": round(ready_s, 3), "first_200_s": round(first_200_s, 3)}
    finally:
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    fresh, warm = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            fresh.append(one_start(data))
            warm.append(one_start(data))
    summary = {
        kind: {key: {"median": round(statistics.median(r[key] for r in runs), 3),
                     "min": min(r[key] for r in runs), "max": max(r[key] for r in runs)}
               for key in ("health_s", "ready_s", "first_200_s")}
        for kind, runs in (("fresh", fresh), ("warm_disk", warm))
    }
    for kind, stats in summary.items():
        print(f"{kind:10} health {stats['health_s']['median']:.2f}s  ready {stats['ready_s']['median']:.2f}s  first 200 {stats['first_200_s']['median']:.2f}s"
              f"  (median of {args.runs})")
    out = write_result("cpu", "cold_start", {"runs": {"fresh": fresh, "warm_disk": warm}, "summary": summary})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
