"""What an accepted job's durability costs per submit: SQLite synchronous=NORMAL vs FULL.

Two measures: the job store's insert alone (the commit that must reach the disk before "accepted"), and the
whole HTTP submit (`celery=true`, 202) against a real server started with each setting.

    python -m benchmarks.store_durability [--inserts 400] [--submits 60]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.harness import ServerProcess, percentile, write_result
from server.jobs.sqlite import SqliteJobStore
from server.jobs.store import NewJob


def insert_latency(mode: str, n: int) -> list[float]:
    """Milliseconds per committed insert (with the queue bound checked, as the service does)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteJobStore(Path(tmp) / "jobs.sqlite3", synchronous=mode)
        out = []
        for i in range(n):
            started = time.perf_counter()
            store.create(NewJob(f"j{i}", "m", "k", {"prompt": "p" * 200}), max_active=10**6)
            out.append((time.perf_counter() - started) * 1000)
        store.close()
    return out


def submit_latency(mode: str, n: int, demo_dir: Path | None) -> list[float]:
    """Milliseconds per accepted HTTP submit (202) on a server using `mode`."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = ServerProcess(Path(tmp) / "data", demo_dir, env={"DARKROOM_SQLITE_SYNCHRONOUS": mode,
                                                                "DARKROOM_MODELS": "seedream-4.0"})
        try:
            proc.wait_ready(timeout=300)
            body = {"model": "seedream-4.0", "prompt": "durability", "quality": "512", "num_inference_steps": 1,
                    "celery": True}
            out = []
            with httpx.Client(base_url=proc.base_url, timeout=30) as client:
                for _ in range(n):
                    started = time.perf_counter()
                    r = client.post("/api/v1/images/generate", json=body)
                    out.append((time.perf_counter() - started) * 1000)
                    assert r.status_code == 202, r.text
        finally:
            proc.stop()
    return out


def _summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(ms), 3), "p95_ms": round(percentile(ms, 95), 3),
            "mean_ms": round(statistics.fmean(ms), 3), "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inserts", type=int, default=400)
    parser.add_argument("--submits", type=int, default=60)
    parser.add_argument("--demo-dir", type=Path, default=None, help="Reuse built demo weights (default: build).")
    args = parser.parse_args()
    results = {}
    for mode in ("normal", "full"):
        results[mode] = {"insert": _summary(insert_latency(mode, args.inserts)),
                         "http_submit": _summary(submit_latency(mode, args.submits, args.demo_dir))}
        print(f"synchronous={mode:6} insert p50 {results[mode]['insert']['p50_ms']:.2f} ms  "
              f"HTTP submit p50 {results[mode]['http_submit']['p50_ms']:.2f} ms")
    out = write_result("cpu", "store_durability", {"results": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
