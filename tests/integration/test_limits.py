"""Overload, retries and tenants: a bounded queue answers 429 with Retry-After (never a 5xx), Idempotency-Key returns
the same task for a retried request, CORS stays off unless configured, and named keys are kept apart (tasks, the
engine's view of running jobs, and webhook signatures)."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from server.api.idempotency import RESERVATION_STALE_S, body_digest
from tests.support import ServerProcess, data_url, png_bytes

QUEUE = 3
FLASH = "vertex/nano-banana-flash"
# Slow enough (50 steps at 1K) that the queue stays full while the test floods it.
SLOW = {"model": FLASH, "prompt": "x", "quality": "1K", "celery": True, "num_inference_steps": 50}
FLOOD, ALICE, BOB = "flood-key-0123456789", "alice-key-0123456789", "bob-key-0123456789"
CAROL, OPS = "carol-key-0123456789", "ops-key-0123456789xx"
CAROL_SECRET = "carol-signs-with-this-0123"
KEYS_FILE = f"""
[keys.flood]
key = "{FLOOD}"
[keys.alice]
key = "{ALICE}"
rate_per_minute = 3
[keys.bob]
key_sha256 = "{hashlib.sha256(BOB.encode()).hexdigest()}"
jobs_per_day = 1
[keys.carol]
key = "{CAROL}"
webhook_secret = "{CAROL_SECRET}"
[keys.ops]
key = "{OPS}"
admin = true
"""


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    """One model, a 3-job queue, named keys with a rate limit and a quota, small body/JSON/multipart limits."""
    data = tmp_path_factory.mktemp("data")
    keys = data / "keys.toml"
    keys.write_text(KEYS_FILE)
    proc = ServerProcess(data / "queue", demo_dir,
                         env={"DARKROOM_MODELS": FLASH, "DARKROOM_MAX_QUEUE": str(QUEUE),
                              "DARKROOM_QUEUE_RETRY_AFTER_S": "7", "DARKROOM_MAX_BATCH": "1",
                              "DARKROOM_CORS_ORIGINS": "https://studio.example", "DARKROOM_API_KEYS_FILE": str(keys),
                              "DARKROOM_MAX_BODY_BYTES": "300000", "DARKROOM_MAX_JSON_DEPTH": "8",
                              "DARKROOM_MAX_MULTIPART_PARTS": "6", "DARKROOM_MAX_MULTIPART_FIELD_BYTES": "5000",
                              # The webhook receivers of the tenant tests listen on loopback.
                              "DARKROOM_URL_ALLOWLIST": "127.0.0.1/32"})
    try:
        proc.wait_ready(headers=_as(FLOOD))
        yield proc
    finally:
        proc.stop()


def test_five_times_the_queue_gets_only_2xx_and_429(small_queue: ServerProcess) -> None:
    def post(i: int) -> httpx.Response:
        with small_queue.client(headers=_as(FLOOD)) as c:
            started = time.perf_counter()
            r = c.post("/api/v1/images/generate", json={**SLOW, "seed": i})
            r.extensions["took_s"] = time.perf_counter() - started
            return r

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(5 * QUEUE)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {202, 429}, codes
    assert codes.count(202) <= QUEUE + 1 and codes.count(429) >= 5 * QUEUE - QUEUE - 1
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["retry-after"] == "7" and refused.json()["error"]["code"] == "queue_full"
    # A full queue answers at once: no request waited on the model.
    assert max(r.extensions["took_s"] for r in answers if r.status_code == 429) < 5
    with small_queue.client(headers=_as(FLOOD)) as c:
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
        # A request killed mid-accept (kill -9 between reserving its key and committing its job) leaves the key
        # reserved; once that reservation has gone untouched past the bound, the client's retry is accepted.
        scoped = hashlib.sha256(b"").hexdigest()[:16] + ":order-44"
        with sqlite3.connect(server.data_dir / "jobs.sqlite3", timeout=10) as db:
            db.execute("INSERT INTO idempotency (key, body_sha, job_id, created_at) VALUES (?, ?, NULL, ?)",
                       (scoped, body_digest(body, {}), time.time() - RESERVATION_STALE_S - 1))
        retried = c.post("/api/v1/images/generate", json=body, headers={"Idempotency-Key": "order-44"})
        assert retried.status_code == 202, retried.text


def test_cors_only_when_configured(small_queue: ServerProcess, server: ServerProcess) -> None:
    pre = {"Origin": "https://studio.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    with small_queue.client() as c:  # preflights carry no key
        r = c.options("/api/v1/images/generate", headers=pre)
        assert r.headers.get("access-control-allow-origin") == "https://studio.example"
        r = c.options("/api/v1/images/generate", headers={**pre, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with server.client() as c:
        r = c.options("/api/v1/images/generate", headers=pre)
        assert "access-control-allow-origin" not in r.headers


def test_named_keys_rate_limit_and_quota(small_queue: ServerProcess) -> None:
    quick = {"model": FLASH, "prompt": "k", "quality": "512", "num_inference_steps": 1, "celery": True}
    with small_queue.client() as c:
        assert c.get("/api/v1/images/models").status_code == 401
        assert c.get("/api/v1/images/models", headers=_as("alice-key-0123456788")).status_code == 401
        # alice: 3 requests a minute, then 429 rate_limited with the wait.
        codes = [c.get("/api/v1/images/models", headers=_as(ALICE)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = c.get("/api/v1/images/models", headers={"x-key": ALICE})
        assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        # bob's key is stored only as a SHA-256 digest; one job a day.
        first = c.post("/api/v1/images/generate", json=quick, headers=_as(BOB))
        assert first.status_code == 202, first.text
        second = c.post("/api/v1/images/generate", json=quick, headers=_as(BOB))
        assert second.status_code == 429 and second.json()["error"]["code"] == "quota_exceeded"
        assert 86000 < int(second.headers["retry-after"]) <= 86401
        # Other keys are unaffected.
        c.post(f"/api/v1/tasks/{first.json()['task_id']}/cancel", headers=_as(BOB))
        assert c.get("/api/v1/images/models", headers=_as(FLOOD)).status_code == 200


def test_body_json_and_multipart_limits(small_queue: ServerProcess) -> None:
    auth = _as(FLOOD)
    base = {"model": FLASH, "prompt": "x", "quality": "512", "num_inference_steps": 1}
    with small_queue.client(headers=auth) as c:
        big = c.post("/api/v1/images/generate", json={**base, "image_urls": [data_url(b"x" * 400_000)]})
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            yield b'{"model": "' + FLASH.encode() + b'", "prompt": "'
            for _ in range(40):
                yield b"p" * 10_000
            yield b'"}'

        streamed = c.post("/api/v1/images/generate", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "payload_too_large"
        deep = c.post("/api/v1/images/generate", content=json.dumps({**base, "extra": [[[[[[[[[1]]]]]]]]]}),
                      headers={"Content-Type": "application/json"})
        assert deep.status_code == 400 and deep.json()["error"]["code"] == "json_too_deep"
        # A bracket inside a string is text, not nesting.
        shallow = c.post("/api/v1/images/generate", json={**base, "prompt": "[[[[[[[[[[[[ {{{{{{{{{{"})
        assert shallow.status_code == 200, shallow.text
        huge_nesting = c.post("/v1/images/generations", content=b"[" * 100_000,
                              headers={"Content-Type": "application/json"})
        assert huge_nesting.status_code == 400 and huge_nesting.json()["error"]["code"] == "json_too_deep"
        many = c.post("/api/v1/images/generate", data={**base, **{f"x{i}": "1" for i in range(8)}},
                      files={"image": ("a.png", png_bytes(), "image/png")})
        assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_parts"
        long_field = c.post("/api/v1/images/generate", data={**base, "prompt": "p" * 6000},
                            files={"image": ("a.png", png_bytes(), "image/png")})
        assert long_field.status_code == 413 and long_field.json()["error"]["code"] == "payload_too_large"


def test_a_task_is_visible_only_to_the_key_that_created_it(small_queue: ServerProcess) -> None:
    with small_queue.client(headers=_as(FLOOD)) as owner, small_queue.client(headers=_as(BOB)) as other:
        task = owner.post("/api/v1/images/generate", json={**SLOW, "num_inference_steps": 2}).json()["task_id"]
        for method, path in (("GET", f"/api/v1/tasks/{task}"), ("GET", f"/api/v1/tasks/{task}/events"),
                             ("POST", f"/api/v1/tasks/{task}/cancel"), ("DELETE", f"/api/v1/tasks/{task}")):
            r = other.request(method, path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path, r.text)
        assert task not in [t["task_id"] for t in other.get("/api/v1/tasks").json()["tasks"]]
        assert task in [t["task_id"] for t in owner.get("/api/v1/tasks").json()["tasks"]]
        assert owner.get(f"/api/v1/tasks/{task}").status_code == 200
        owner.post(f"/api/v1/tasks/{task}/cancel")


def test_running_task_ids_are_shown_only_to_their_key(small_queue: ServerProcess) -> None:
    with small_queue.client(headers=_as(FLOOD)) as owner:
        task = owner.post("/api/v1/images/generate", json={**SLOW, "num_inference_steps": 200}).json()["task_id"]
        deadline = time.monotonic() + 60
        while owner.get(f"/api/v1/tasks/{task}").json()["status"] != "processing":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        try:
            def seen(key: str) -> tuple[list[str], int, list[str]]:
                engine = small_queue.client().get("/api/v1/engine", headers=_as(key)).json()
                ready = small_queue.client().get("/ready", headers=_as(key)).json()
                batch = [j for w in engine["workers"] for j in w["current_batch"]]
                return batch, sum(w["other_keys_jobs"] for w in engine["workers"]), ready["running"]

            assert seen(FLOOD) == ([task], 0, [task])
            assert seen(CAROL) == ([], 1, [])  # another tenant learns that the GPU is busy, not with what
            assert seen(OPS)[0] == [task] and seen(OPS)[2] == [task]  # an admin key sees all
        finally:
            owner.post(f"/api/v1/tasks/{task}/cancel")


def _signed_by(headers: dict[str, str], body: bytes, secret: str) -> bool:
    expected = hmac.new(secret.encode(), headers["x-darkroom-timestamp"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-darkroom-signature"], f"sha256={expected}")


def test_each_key_signs_its_own_webhooks(small_queue: ServerProcess) -> None:
    """flood's secret is derived from its key, carol's set in the keys file: each verifies its own deliveries, and
    neither secret verifies (so neither tenant can forge) the other's."""
    from tests.integration.test_dialects import Receiver

    quick = {"model": FLASH, "prompt": "hook", "quality": "512", "num_inference_steps": 1, "celery": True}
    flood_secret = hmac.new(FLOOD.encode(), b"darkroom-webhook-v1", hashlib.sha256).hexdigest()
    hooks = {FLOOD: Receiver(), CAROL: Receiver()}
    try:
        for key, hook in hooks.items():
            with small_queue.client(headers=_as(key)) as c:
                r = c.post("/api/v1/images/generate", json={**quick, "webhook_url": hook.url})
                assert r.status_code == 202, r.text
        for hook in hooks.values():
            hook.wait(1)
        (flood_headers, flood_body), (carol_headers, carol_body) = hooks[FLOOD].calls[0], hooks[CAROL].calls[0]
        assert _signed_by(flood_headers, flood_body, flood_secret)
        assert not _signed_by(flood_headers, flood_body, CAROL_SECRET)
        assert _signed_by(carol_headers, carol_body, CAROL_SECRET)
        assert not _signed_by(carol_headers, carol_body, flood_secret)
    finally:
        for hook in hooks.values():
            hook.close()


def test_refusals_are_logged_with_the_key_name_never_the_key(small_queue: ServerProcess) -> None:
    """Text logs carry the same fields as JSON ones, as logfmt pairs after the message."""
    import shlex

    with small_queue.client() as c:
        c.get("/api/v1/images/models", headers={"X-Request-Id": "no-key-1"})
        c.get("/api/v1/images/models", headers={"X-Request-Id": "with-key-1", **_as(FLOOD)})
    time.sleep(0.3)
    log = small_queue.log()
    assert FLOOD not in log and ALICE not in log  # the key name, never the key

    def fields(request_id: str) -> dict[str, str]:
        line = next(x for x in log.splitlines() if f"request_id={request_id}" in x and "event=request" in x)
        return dict(pair.split("=", 1) for pair in shlex.split(line.split(": ", 1)[1].split(" -> ", 1)[1])
                    if "=" in pair)

    refused, ok = fields("no-key-1"), fields("with-key-1")
    assert refused["status"] == "401" and refused["code"] == "unauthorized" and refused["outcome"] == "refused"
    assert "key" not in refused
    assert ok["status"] == "200" and ok["key"] == "flood" and ok["route"] == "/api/v1/images/models"
