"""Overload and retries: a bounded queue answers 429 with Retry-After (never a 5xx), Idempotency-Key returns the
same task for a retried request, and CORS stays off unless configured."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess

QUEUE = 3
# Slow enough (50 steps at 1K) that the queue stays full while the test floods it.
SLOW = {"model": "seedream-4.0", "prompt": "x", "quality": "1K", "celery": True, "num_inference_steps": 50}


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("data") / "queue", demo_dir,
                         env={"DARKROOM_MAX_QUEUE": str(QUEUE), "DARKROOM_QUEUE_RETRY_AFTER_S": "7",
                              "DARKROOM_MAX_BATCH": "1", "DARKROOM_CORS_ORIGINS": "https://studio.example"})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_five_times_the_queue_gets_only_2xx_and_429(small_queue: ServerProcess) -> None:
    def post(i: int) -> httpx.Response:
        with small_queue.client() as c:
            return c.post("/api/v1/images/generate", json={**SLOW, "seed": i})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(5 * QUEUE)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {202, 429}, codes
    assert codes.count(202) <= QUEUE + 1 and codes.count(429) >= 5 * QUEUE - QUEUE - 1
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["retry-after"] == "7" and refused.json()["error"]["code"] == "queue_full"
    with small_queue.client() as c:
        for r in answers:
            if r.status_code == 202:
                c.post(f"/api/v1/tasks/{r.json()['task_id']}/cancel")


def test_idempotency_key_returns_the_same_task(server: ServerProcess) -> None:
    body = {"model": "vertex/nano-banana-flash", "prompt": "a kite", "quality": "512", "celery": True,
            "num_inference_steps": 1, "seed": 3}
    with server.client() as c:
        first = c.post("/api/v1/images/generate", json=body, headers={"Idempotency-Key": "order-41"})
        again = c.post("/api/v1/images/generate", json=dict(reversed(body.items())),
                       headers={"Idempotency-Key": "order-41"})
        assert first.status_code == again.status_code == 202
        assert first.json()["task_id"] == again.json()["task_id"]
        other = c.post("/api/v1/images/generate", json={**body, "prompt": "a boat"},
                       headers={"Idempotency-Key": "order-41"})
        assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
        fresh = c.post("/api/v1/images/generate", json=body, headers={"Idempotency-Key": "order-42"})
        assert fresh.json()["task_id"] != first.json()["task_id"]
        # A synchronous retry of a finished request answers with the first task's images.
        sync = {**body, "celery": False}
        a = c.post("/api/v1/images/generate", json=sync, headers={"Idempotency-Key": "order-43"})
        b = c.post("/api/v1/images/generate", json=sync, headers={"Idempotency-Key": "order-43"})
        assert a.status_code == b.status_code == 200 and a.json()["images"] == b.json()["images"]


def test_cors_only_when_configured(small_queue: ServerProcess, server: ServerProcess) -> None:
    pre = {"Origin": "https://studio.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    with small_queue.client() as c:
        r = c.options("/api/v1/images/generate", headers=pre)
        assert r.headers.get("access-control-allow-origin") == "https://studio.example"
        r = c.options("/api/v1/images/generate", headers={**pre, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with server.client() as c:
        r = c.options("/api/v1/images/generate", headers=pre)
        assert "access-control-allow-origin" not in r.headers
