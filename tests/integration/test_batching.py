"""Cross-request batching on the real server: concurrent requests for one model come out of one pipeline call,
and the engine's state is visible as JSON and Prometheus metrics."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support import ServerProcess


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    # A batch smaller than max_batch waits up to 3 s for mates, so requests sent together share it.
    proc = ServerProcess(tmp_path_factory.mktemp("data") / "batching", demo_dir,
                         env={"DARKROOM_MAX_BATCH": "3", "DARKROOM_BATCH_MAX_WAIT_S": "3",
                              "DARKROOM_MODELS": "seedream-4.0,flux-kontext-max"})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def _submit(server: ServerProcess, prompt: str, **extra: object) -> str:
    with server.client() as c:
        r = c.post("/api/v1/images/generate", json={"model": "seedream-4.0", "prompt": prompt, "quality": "512",
                                                     "num_inference_steps": 2, "celery": True, **extra})
        assert r.status_code == 202, r.text
        return r.json()["task_id"]


def _wait(c: httpx.Client, task_id: str) -> dict[str, object]:
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        view = c.get(f"/api/v1/tasks/{task_id}").json()
        if view["status"] in ("completed", "failed", "cancelled"):
            return view
        time.sleep(0.2)
    raise AssertionError(f"{task_id} did not finish")


def test_concurrent_requests_share_one_call(batching_server: ServerProcess) -> None:
    prompts = ["a red fox", "a blue bird", "a green frog"]
    with ThreadPoolExecutor(3) as pool:
        ids = list(pool.map(lambda p: _submit(batching_server, p, seed=7), prompts))
    with batching_server.client() as c:
        views = [_wait(c, i) for i in ids]
        image_bytes = [c.get(v["images"][0]["url"]).content for v in views]  # type: ignore[index]
    assert all(v["status"] == "completed" for v in views), views
    batches = [v["darkroom"]["batch"] for v in views]  # type: ignore[index]
    assert len({b["id"] for b in batches}) == 1 and batches[0]["size"] == 3 and batches[0]["shared_call"]
    assert sorted(b["position"] for b in batches) == [0, 1, 2]
    # Same seed, different prompts: each request got its own image back.
    assert len(set(image_bytes)) == 3
    for v in views:
        est = v["darkroom"]["estimate"]  # type: ignore[index]
        assert est["peak_gb"] > 0 and est["placement"] == "resident" and est["seconds_full_size"] > 0


@pytest.mark.parametrize("model", ["flux-kontext-max", "seedream-4.0"])
def test_concurrent_edits_with_different_sources_share_one_call(batching_server: ServerProcess, model: str) -> None:
    """Edits whose pipeline takes one source per prompt merge across requests; each image equals the same request
    run alone with the same seed, within 4 levels on under 0.5% of pixels: on the CPU a batched matmul may sum
    in another order than the same matmul at batch 1 (at 64 px Kontext is byte-identical: test_fast_path.py)."""
    from tests.support import data_url, png_bytes

    sources = [data_url(png_bytes((96, 64), colour)) for colour in ((200, 40, 40), (40, 200, 40), (40, 40, 200))]

    def body(i: int) -> dict[str, object]:
        return {"model": model, "prompt": f"edit {i}", "image_urls": [sources[i]], "quality": "512", "seed": 11 + i,
                "num_inference_steps": 4}

    def submit(i: int) -> str:
        with batching_server.client() as c:
            r = c.post("/api/v1/images/generate", json={**body(i), "celery": True})
            assert r.status_code == 202, r.text
            return r.json()["task_id"]

    with ThreadPoolExecutor(3) as pool:
        ids = list(pool.map(submit, range(3)))
    with batching_server.client() as c:
        views = [_wait(c, i) for i in ids]
        shared = [np.asarray(Image.open(io.BytesIO(c.get(v["images"][0]["url"]).content))) for v in views]  # type: ignore[index]
        batches = [v["darkroom"]["batch"] for v in views]  # type: ignore[index]
        assert len({b["id"] for b in batches}) == 1 and batches[0]["size"] == 3 and batches[0]["shared_call"]
        for i, image in enumerate(shared):
            alone = c.post("/api/v1/images/generate", json=body(i)).json()  # one at a time: a solo call
            assert alone["darkroom"]["batch"]["size"] == 1
            solo = np.asarray(Image.open(io.BytesIO(c.get(alone["images"][0]["url"]).content)))
            diff = np.abs(solo.astype(int) - image.astype(int))
            assert diff.max() <= 4 and (diff > 0).mean() < 5e-3, (model, i, diff.max(), (diff > 0).mean())


def test_different_sizes_do_not_share_and_the_reason_is_counted(batching_server: ServerProcess) -> None:
    with ThreadPoolExecutor(2) as pool:
        ids = list(pool.map(lambda kw: _submit(batching_server, "x", **kw),
                            [{"aspect_ratio": "1:1"}, {"aspect_ratio": "16:9"}]))
    with batching_server.client() as c:
        views = [_wait(c, i) for i in ids]
        engine = c.get("/api/v1/engine").json()
        metrics = c.get("/metrics").text
    assert views[0]["darkroom"]["batch"]["id"] != views[1]["darkroom"]["batch"]["id"]  # type: ignore[index]
    worker = engine["workers"][0]
    assert any(r["weights"] == "sdxl-base-1.0" and r["bytes"] > 0 for r in worker["resident"])
    assert engine["batching"]["shared_calls"] >= 1
    assert engine["not_batched"].get("height", 0) + engine["not_batched"].get("width", 0) >= 1
    # prometheus-client writes labels sorted by name.
    assert any(ln.startswith("darkroom_model_resident_bytes{") and 'worker="w0"' in ln for ln in metrics.splitlines())
    assert "darkroom_shared_calls_total" in metrics and 'darkroom_not_batched_total{reason="' in metrics


@pytest.fixture(scope="module")
def small_gpu_server(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    # A 50 MB memory limit: the tiny weights fit, a 512 px SDXL render's activations never do.
    proc = ServerProcess(tmp_path_factory.mktemp("data") / "small", demo_dir,
                         env={"DARKROOM_MEMORY_LIMIT_GB": "0.05", "DARKROOM_MODELS": "seedream-4.0"})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_a_job_too_big_for_every_device_is_refused_with_sizes(small_gpu_server: ServerProcess) -> None:
    with small_gpu_server.client() as c:
        r = c.post("/api/v1/images/generate", json={"model": "seedream-4.0", "prompt": "x", "quality": "512"})
    err = r.json()["error"]
    assert (r.status_code, err["code"]) == (422, "insufficient_vram")
    assert "seedream-4.0 at 512x512 needs 0." in err["message"]
    assert "GB of GPU memory even with offload, and the largest GPU budget here is 0.05 GB" in err["message"]
