"""The Ray path against the in-process path, on the tiny demo models (CPU-bound figures on any machine):

- per-job overhead: wall latency of one sync request minus its pipeline seconds, p50 over sequential jobs, for
  the in-process worker and for one Ray worker actor (inputs and outputs cross Ray's object store);
- throughput of concurrent jobs with 1 and then 2 worker actors (a second Ray node joins mid-run and the
  front end's cluster watch picks it up), as a ratio.

Ray binds the machine's interfaces whatever it is told, so the script re-runs itself inside a private network
and PID namespace (`unshare -n -p -f`, root) where only 127.0.0.1 exists; everything it starts ends with it.

    python -m benchmarks.cluster_overhead     # -> benchmarks/results/cpu/cluster_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import REPO, ServerProcess, free_port, write_result
from server.config import DarkroomConfig

JOB = {"model": "flux-kontext-pro", "prompt": "overhead", "quality": "512", "num_inference_steps": 2}


def _image() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _one(base: str, i: int, steps: int = JOB["num_inference_steps"]) -> tuple[float, float]:
    started = time.perf_counter()
    r = httpx.post(f"{base}/api/v1/images/generate", timeout=600,
                   json={**JOB, "num_inference_steps": steps, "seed": i, "image_urls": [_image()]})
    r.raise_for_status()
    return time.perf_counter() - started, r.json()["darkroom"]["timings"]["pipeline_s"]


def sequential(base: str, n: int) -> dict[str, float]:
    """p50 of latency, pipeline seconds and their difference over n one-at-a-time sync jobs."""
    _one(base, 999_999)  # warm-up
    runs = [_one(base, i) for i in range(n)]
    return {"latency_p50_ms": round(statistics.median(r[0] for r in runs) * 1000, 1),
            "pipeline_p50_ms": round(statistics.median(r[1] for r in runs) * 1000, 1),
            "overhead_p50_ms": round(statistics.median(r[0] - r[1] for r in runs) * 1000, 1)}


HEAVY_STEPS = 20


def concurrent(base: str, n: int, steps: int = JOB["num_inference_steps"]) -> float:
    """Jobs per second for n jobs sent at once."""
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda i: _one(base, 1000 + i, steps), range(n)))
    return n / (time.perf_counter() - started)


def throughputs(base: str, n: int) -> dict[str, float]:
    """Jobs per second for light jobs (the front end's per-job work weighs) and heavier ones (the render does)."""
    return {"jobs_per_s": round(concurrent(base, n), 3),
            f"jobs_per_s_{HEAVY_STEPS}_steps": round(concurrent(base, n // 2, HEAVY_STEPS), 3)}


def _ray(*args: str) -> None:
    cli = Path(sys.executable).with_name("ray")
    subprocess.run([str(cli), *args], check=True, capture_output=True, timeout=180,
                   env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def inside(args: argparse.Namespace) -> dict[str, Any]:
    """The measurement, run inside the private namespace."""
    from weights.demo import build_demo

    tmp = Path(tempfile.mkdtemp(prefix="darkroom-cluster-bench-"))
    demo = tmp / "demo"
    build_demo(DarkroomConfig.packaged().manifest["flux1-kontext-dev"], demo)
    # One thread per worker on both paths, so the comparison is per worker and 2 actors can use 2 cores.
    common = {"DARKROOM_MODELS": "flux-kontext-pro", "DARKROOM_MAX_BATCH": "1", "OMP_NUM_THREADS": "1"}
    local = ServerProcess(tmp / "local", demo, env=common)
    try:
        local.wait_ready(timeout=300)
        local_seq = sequential(local.base_url, args.jobs)
        local_tput = throughputs(local.base_url, args.concurrent)
    finally:
        local.stop()
    port = free_port()
    node = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--resources",
            '{"darkroom_worker": 1}', "--disable-usage-stats", "--object-store-memory", "150000000"]
    _ray("start", "--head", "--port", str(port), "--include-dashboard", "false", *node)
    front = ServerProcess(tmp / "ray", demo, env={**common, "DARKROOM_BACKEND": "ray",
                                                  "DARKROOM_RAY_ADDRESS": f"127.0.0.1:{port}"})
    try:
        front.wait_ready(timeout=600)
        ray_seq = sequential(front.base_url, args.jobs)
        one_actor = throughputs(front.base_url, args.concurrent)
        _ray("start", "--address", f"127.0.0.1:{port}", *node)
        deadline = time.monotonic() + 120
        while len(httpx.get(f"{front.base_url}/api/v1/engine", timeout=30).json()["workers"]) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the second node's worker did not appear")
            time.sleep(1)
        concurrent(front.base_url, 2)  # warm the new actor
        two_actors = throughputs(front.base_url, args.concurrent)
    finally:
        front.stop()
        _ray("stop", "--force")
    heavy = f"jobs_per_s_{HEAVY_STEPS}_steps"
    return {
        "in_process": {**local_seq, **local_tput},
        "ray_one_actor": {**ray_seq, **one_actor},
        "ray_two_actors": two_actors,
        "ray_overhead_over_in_process_p50_ms": round(ray_seq["overhead_p50_ms"] - local_seq["overhead_p50_ms"], 1),
        "two_vs_one_actor_throughput": round(two_actors["jobs_per_s"] / one_actor["jobs_per_s"], 2),
        f"two_vs_one_actor_throughput_{HEAVY_STEPS}_steps": round(two_actors[heavy] / one_actor[heavy], 2),
        "cpu_cores": os.cpu_count(),
        "jobs": args.jobs, "concurrent": args.concurrent, "job": JOB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="sequential jobs per path")
    parser.add_argument("--concurrent", type=int, default=16, help="jobs sent at once for throughput")
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        args.inside.write_text(json.dumps(inside(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        inner = (f"ip link set lo up && exec {sys.executable} -m benchmarks.cluster_overhead --inside {out} "
                 f"--jobs {args.jobs} --concurrent {args.concurrent}")
        subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", inner], cwd=REPO, check=True,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        figures = json.loads(out.read_text())
    print(json.dumps(figures, indent=1))
    path = write_result("cpu", "cluster_overhead", {"command": "python -m benchmarks.cluster_overhead", **figures})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
