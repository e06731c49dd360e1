"""DARKROOM_LICENSE_POLICY=commercial: every id runs a commercially usable stand-in, and says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaged import packaged_config
from tests.support import ServerProcess, data_url, png_bytes


@pytest.fixture(scope="module")
def commercial_server(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("data") / "commercial", demo_dir,
                         env={"DARKROOM_LICENSE_POLICY": "commercial"})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_models_show_what_actually_runs(commercial_server: ServerProcess) -> None:
    with commercial_server.client() as c:
        images = {m["id"]: m["local"] for m in c.get("/api/v1/images/models").json()["models"]}
        videos = {m["id"]: m for m in c.get("/api/v1/videos/models").json()["models"]}
        ready = c.get("/ready").json()
    assert sorted(images) == packaged_config().catalog.ids()  # every id still served
    assert all(local["commercial_use"] for local in images.values())
    assert images["flux-kontext-pro"]["family"] == "sdxl"
    assert images["flux-kontext-pro"]["license"] == "CreativeML Open RAIL++-M"
    assert videos["veo-3"]["local"]["family"] == "wan2.2-ti2v-5b" and videos["veo-3"]["supportsAudio"] is False
    assert images["vertex/nano-banana-pro"]["family"] == "flux2-klein"
    # Non-commercial weights are not even loaded.
    assert not {"flux1-kontext-dev", "ltx-2", "flux2-dev"} & set(ready["weights"])


def test_requests_follow_the_policy(commercial_server: ServerProcess) -> None:
    frame = data_url(png_bytes((128, 128)))
    with commercial_server.client() as c:
        r = c.post("/api/v1/images/generate", json={"model": "flux-kontext-pro", "prompt": "x", "quality": "512",
                                                     "image_urls": [frame], "num_inference_steps": 2})
        assert r.status_code == 200, r.text
        assert r.json()["darkroom"]["runtime"]["family"] == "sdxl"
        r = c.post("/api/v1/videos/generate", json={"model": "veo-3", "prompt": "x", "image_urls": [frame],
                                                     "resolution": "240p", "generate_audio": True})
        assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_feature"
        r = c.post("/api/v1/videos/generate", json={"model": "veo-3", "prompt": "x", "image_urls": [frame],
                                                     "resolution": "240p", "duration": 4, "num_inference_steps": 2})
        assert r.status_code == 202 and r.json()["generate_audio"] is False
