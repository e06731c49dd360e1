"""Reliability figures on real servers (loopback only), written to benchmarks/results/reliability.json:

- the hostile-image corpus x 3 transports: crashes (a new serving process), 5xx, answers as documented, peak RSS;
- the SSRF battery: cases sent, canary connections;
- overload at 5x the queue: status counts and the latency of the 429 answers (p50/p99);
- kill -9: M jobs while the serving process is SIGKILLed K times: how many finished exactly once.

    python -m benchmarks.reliability [--jobs 20] [--kills 5]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.harness import ServerProcess, job_rows, percentile, submit_through_kills, write_result
from benchmarks.hostile import (
    BODY_ABUSE,
    TRANSPORTS,
    Canary,
    hostile_host,
    ipv6_loopback,
    shared_corpus,
    ssrf_redirects,
    ssrf_targets,
    submit,
)
from server.config import DarkroomConfig
from weights.demo import build_demo

FLASH = "vertex/nano-banana-flash"
KEY = "reliability-key-0123456789"
CAP = 1_000_000


def _server(root: Path, name: str, demo: Path, **env: str) -> ServerProcess:
    proc = ServerProcess(root / name, demo, env={"DARKROOM_MODELS": FLASH, **env})
    proc.wait_ready(headers={"X-API-Key": env["DARKROOM_API_KEY"]} if "DARKROOM_API_KEY" in env else None)
    return proc


def hostile_inputs(root: Path, demo: Path) -> dict[str, Any]:
    """Corpus x transports, then the SSRF battery, on one server."""
    proc = _server(root, "hostile", demo, DARKROOM_API_KEY=KEY, DARKROOM_URL_ALLOWLIST="127.0.0.1/32",
                   DARKROOM_MAX_IMAGE_BYTES=str(CAP), DARKROOM_FETCH_TOTAL_TIMEOUT_S="3")
    try:
        pid = proc.server_pid()
        rss_before = proc.peak_rss_mb()
        cases = shared_corpus()
        statuses: dict[str, int] = {}
        as_documented = 0
        with hostile_host({}, CAP) as base, proc.client(headers={"X-API-Key": KEY}) as c:
            for index, case in enumerate(cases):
                for transport in TRANSPORTS:
                    r = submit(c, index, transport, base, FLASH)
                    statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                    code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
                    as_documented += (r.status_code, code) == (case.expect or 202, case.code)
        corpus = {"inputs": len(cases), "transports": list(TRANSPORTS), "requests": len(cases) * len(TRANSPORTS),
                  "crashes": int(proc.server_pid() != pid), "status_5xx": sum(n for s, n in statuses.items()
                                                                             if s.startswith("5")),
                  "answered_as_documented": as_documented, "statuses": statuses,
                  "peak_rss_mb_before": round(rss_before, 1), "peak_rss_mb_after": round(proc.peak_rss_mb(), 1)}

        v4 = Canary("127.0.0.2")
        v6 = Canary("::1") if ipv6_loopback() else None
        v6_port = v6.port if v6 else None
        codes: dict[str, int] = {}
        try:
            with hostile_host(ssrf_redirects(v4.port, v6_port), CAP) as base, \
                    proc.client(headers={"X-API-Key": KEY}) as c:
                urls = [u for _, u in ssrf_targets(v4.port, v6_port)]
                urls += [f"{base}{p}" for p in [*ssrf_redirects(v4.port, v6_port), *BODY_ABUSE]]
                for url in urls:
                    r = c.post("/api/v1/images/generate", json={"model": FLASH, "prompt": "x", "quality": "512",
                                                                "num_inference_steps": 1, "image_urls": [url]})
                    key = f"{r.status_code} {r.json().get('error', {}).get('code')}"
                    codes[key] = codes.get(key, 0) + 1
        finally:
            v4.close()
            if v6:
                v6.close()
        ssrf = {"cases": len(urls), "canary_hits": v4.hits + (v6.hits if v6 else 0), "answers": codes,
                "ipv6_canary": v6 is not None}
        return {"hostile_images": corpus, "ssrf": ssrf}
    finally:
        proc.stop()


def overload(root: Path, demo: Path, queue: int = 10) -> dict[str, Any]:
    """5x the queue limit in flight at once."""
    proc = _server(root, "overload", demo, DARKROOM_MAX_QUEUE=str(queue), DARKROOM_MAX_BATCH="1")
    slow = {"model": FLASH, "prompt": "x", "quality": "1K", "celery": True, "num_inference_steps": 50}

    def post(i: int) -> tuple[int, float]:
        with proc.client() as c:
            started = time.perf_counter()
            r = c.post("/api/v1/images/generate", json={**slow, "seed": i})
            return r.status_code, (time.perf_counter() - started) * 1000

    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, range(5 * queue)))
    finally:
        proc.stop()
    refused = [ms for status, ms in answers if status == 429]
    counts: dict[str, int] = {}
    for status, _ in answers:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return {"queue_limit": queue, "in_flight": 5 * queue, "statuses": counts,
            "status_5xx": sum(n for s, n in counts.items() if s.startswith("5")),
            "p50_429_ms": round(percentile(refused, 50), 2) if refused else None,
            "p99_429_ms": round(percentile(refused, 99), 2) if refused else None}


def crashes(root: Path, demo: Path, jobs: int, kills: int, seed: int = 11) -> dict[str, Any]:
    """Submit `jobs` (clients retry with their Idempotency-Key) while SIGKILLing the serving process `kills` times."""
    rng = random.Random(seed)
    data = root / "crash"
    proc = _server(root, "crash", demo)
    unexpected: list[str] = []
    try:
        bodies = [{"model": FLASH, "prompt": f"job {i}", "quality": "512", "celery": True,
                   "num_inference_steps": rng.randint(2, 12), "seed": i} for i in range(jobs)]
        accepted = submit_through_kills(proc, bodies, kills, rng, unexpected)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = job_rows(data)
            if all(rows.get(t) is not None and rows[t]["status"] in ("completed", "failed", "cancelled")
                   for t in accepted.values()):
                break
            time.sleep(0.2)
    finally:
        proc.stop()
    rows = job_rows(data)
    once = sum(1 for t in accepted.values() if rows[t]["status"] == "completed" and rows[t]["finishes"] == 1)
    return {"jobs": jobs, "accepted": len(accepted), "kills": kills, "rows_in_db": len(rows),
            "unexpected_answers": unexpected,
            "completed_exactly_once": once, "finished_more_than_once": sum(1 for r in rows.values()
                                                                          if r["finishes"] > 1),
            "attempts_max": max((r["attempts"] for r in rows.values()), default=0)}


def main() -> None:
    """Run every part and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="darkroom-reliability-") as tmp:
        root = Path(tmp)
        demo = root / "demo-weights"
        build_demo(DarkroomConfig.packaged().manifest["flux2-klein-4b"], demo)
        result = hostile_inputs(root, demo)
        result["overload"] = overload(root, demo)
        result["crash"] = crashes(root, demo, args.jobs, args.kills)
    h, s, o, c = result["hostile_images"], result["ssrf"], result["overload"], result["crash"]
    result["summary"] = [
        (f"{h['inputs']} hostile inputs x {len(h['transports'])} transports: {h['crashes']} crashes, "
         f"{h['status_5xx']} 5xx ({h['answered_as_documented']}/{h['requests']} answered as documented)"),
        f"{s['cases']} SSRF cases: {s['canary_hits']} canary hits",
        f"{c['accepted']} jobs, {c['kills']} kills: {c['completed_exactly_once']}/{c['accepted']} completed once",
        f"overload at 5x: {o['status_5xx']} 5xx, p99 429 latency {o['p99_429_ms']} ms",
    ]
    path = write_result("", "reliability", result)
    for line in result["summary"]:
        print(line)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
