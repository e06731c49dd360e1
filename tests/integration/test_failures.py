"""A model that cannot load: /ready says so, its jobs fail cleanly, other models keep serving."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, task_when_done


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    demo = tmp_path_factory.mktemp("broken") / "demo"
    shutil.copytree(demo_dir, demo)
    for f in (demo / "sdxl-base-1.0" / "unet").glob("*.safetensors"):
        f.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    proc = ServerProcess(demo.parent / "data", demo, env={"DARKROOM_MODELS": "seedream-4.0,flux-kontext-pro"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{proc.base_url}/ready", timeout=2)
                if "could not be loaded" in r.text:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield proc
    finally:
        proc.stop()


def test_ready_reports_the_model(broken_server: ServerProcess) -> None:
    with broken_server.client() as c:
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503
        assert "sdxl-base-1.0 could not be loaded on cpu" in r.json()["problems"]


def test_failed_jobs_carry_a_clean_error(broken_server: ServerProcess) -> None:
    body = {"model": "seedream-4.0", "prompt": "x", "quality": "512", "num_inference_steps": 2}
    with broken_server.client() as c:
        r = c.post("/api/v1/images/generate", json=body)
        assert r.status_code == 500
        assert r.json()["status"] == "failed" and r.json()["error"]["code"] == "generation_failed"
        assert "Traceback" not in r.text and "safetensors" not in r.text and "/tmp" not in r.text

        task = c.post("/api/v1/images/generate", json={**body, "celery": True}).json()["task_id"]
        view = task_when_done(c, task, timeout=60)
        assert view["status"] == "failed"
        assert view["error"]["code"] == "generation_failed" and task in view["error"]["message"]
        assert "images" not in view

        # The worker survives and the healthy model still serves.
        ok = c.post("/api/v1/images/generate", json={**body, "model": "flux-kontext-pro"})
        assert ok.status_code == 200, ok.text
