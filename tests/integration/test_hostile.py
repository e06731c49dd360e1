"""Hostile inputs against a real server: the image corpus through all three transports, and the SSRF battery
with canaries on loopback addresses (zero connections may reach them)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
from tests.support import ServerProcess

FLASH = "vertex/nano-banana-flash"
KEY = "hostile-key-0123456789"
CAP = 1_000_000
# What a decoder's or the runtime's text would bring along: traces, module names, heap addresses, paths.
LEAK = re.compile(r"Traceback|PIL\.|0x[0-9a-fA-F]{6,}|/tmp/|site-packages")


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    """One model; image URLs may reach 127.0.0.1 only (the test's host), nothing else on loopback."""
    proc = ServerProcess(tmp_path_factory.mktemp("data") / "hostile", demo_dir,
                         env={"DARKROOM_MODELS": FLASH, "DARKROOM_API_KEY": KEY,
                              "DARKROOM_URL_ALLOWLIST": "127.0.0.1/32", "DARKROOM_MAX_IMAGE_BYTES": str(CAP),
                              "DARKROOM_FETCH_TOTAL_TIMEOUT_S": "3"})
    try:
        proc.wait_ready(headers={"X-API-Key": KEY})
        yield proc
    finally:
        proc.stop()


def test_every_hostile_image_gets_its_documented_answer_by_every_transport(hostile_server: ServerProcess) -> None:
    cases = shared_corpus()
    wrong, accepted = [], []
    with hostile_host({}, CAP) as base, hostile_server.client(headers={"X-API-Key": KEY}) as c:
        for index, case in enumerate(cases):
            for transport in TRANSPORTS:
                r = submit(c, index, transport, base, FLASH)
                got = (r.status_code, r.json().get("error", {}).get("code") if r.status_code >= 400 else None)
                want = (case.expect or 202, case.code)
                if got != want or LEAK.search(r.text):
                    wrong.append((case.name, transport, got, want, r.text[:200]))
                elif case.expect is None:
                    accepted.append((case.name, transport, r.json()["task_id"]))
        assert not wrong, wrong
        deadline = time.monotonic() + 120
        for name, transport, task in accepted:
            while (done := c.get(f"/api/v1/tasks/{task}").json())["status"] in ("pending", "processing"):
                assert time.monotonic() < deadline, (name, transport, done)
                time.sleep(0.1)
            assert done["status"] == "completed" and done["images"][0]["width"] > 0, (name, transport, done)
    # Bombs are refused from their headers: the server never held their pixels (9500x9500 would be 90+ MB).
    assert hostile_server.peak_rss_mb() < 3000


def test_ssrf_battery_reaches_no_canary(hostile_server: ServerProcess) -> None:
    v4 = Canary("127.0.0.2")
    v6 = Canary("::1") if ipv6_loopback() else None
    v6_port = v6.port if v6 else None
    answers = []
    try:
        with hostile_host(ssrf_redirects(v4.port, v6_port), CAP) as base, \
                hostile_server.client(headers={"X-API-Key": KEY}) as c:
            urls = [*ssrf_targets(v4.port, v6_port), *((f"redirect {p}", f"{base}{p}")
                                                      for p in ssrf_redirects(v4.port, v6_port)),
                    *((f"body {p}", f"{base}{p}") for p in BODY_ABUSE)]
            for name, url in urls:
                r = c.post("/api/v1/images/generate", json={"model": FLASH, "prompt": "x", "quality": "512",
                                                            "num_inference_steps": 1, "image_urls": [url]})
                answers.append((name, r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else None))
    finally:
        v4.close()
        if v6:
            v6.close()
    assert v4.hits == 0 and (v6 is None or v6.hits == 0), answers
    assert all(400 <= status < 500 for _, status, _ in answers), answers
    by_name = {name: code for name, _, code in answers}
    assert by_name["dotted"] == by_name["decimal"] == by_name["redirect /to-canary"] == "url_not_allowed"
    assert by_name["body /big"] == by_name["body /endless"] == "image_too_large"
    assert by_name["body /slow"] == "fetch_failed" and by_name["redirect /loop"] == "fetch_failed"
    assert len(answers) >= 30
