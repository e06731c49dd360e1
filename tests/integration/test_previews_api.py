"""Live previews over darkroom's own API: opt-in per request, carried by the task's event stream, readable as a
JPEG while the task runs, and gone when it ends."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
from PIL import Image

from tests.support import ServerProcess, data_url, png_bytes


def _events(client: httpx.Client, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/api/v1/tasks/{task_id}/events", timeout=120) as r:
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                out.append((kind, data))
                if kind == "progress" and "preview" in data and not any("live" in d for _, d in out):
                    live = client.get(f"/api/v1/tasks/{task_id}/preview")
                    data["live"] = (live.status_code, live.headers.get("content-type"),
                                    live.headers.get("x-darkroom-preview-step"))
    return out


def _jpeg_of(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/jpeg;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    assert im.format == "JPEG"
    return im


def test_an_image_task_that_asks_streams_previews_and_one_that_does_not_never_does(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        asked = c.post("/api/v1/images/generate", json={"model": "seedream-4.0", "prompt": "a harbour",
                                                        "quality": "512", "num_inference_steps": 24, "celery": True,
                                                        "previews": True})
        assert asked.status_code == 202, asked.text
        events = _events(c, asked.json()["task_id"])
        previews = [d for k, d in events if k == "progress" and "preview" in d]
        assert previews and events[-1][0] == "completed"
        steps = [d["preview"]["step"] for d in previews]
        assert steps == sorted(steps) and max(steps) < 24
        im = _jpeg_of(previews[0]["preview"]["image"])
        assert max(im.size) == 256
        status, kind, step = previews[0]["live"]
        assert (status, kind) == (200, "image/jpeg") and int(step) >= 1 or status == 404
        done = c.get(f"/api/v1/tasks/{asked.json()['task_id']}").json()
        assert done["preview"] is None and done["darkroom"]["runtime"]["previews"]["made"] >= 1
        assert c.get(f"/api/v1/tasks/{asked.json()['task_id']}/preview").status_code == 404  # the result replaced it

        quiet = c.post("/api/v1/images/generate", json={"model": "seedream-4.0", "prompt": "a harbour",
                                                        "quality": "512", "num_inference_steps": 8, "celery": True})
        events = _events(c, quiet.json()["task_id"])
        assert not [d for k, d in events if k == "progress" and "preview" in d]
        assert "previews" not in c.get(f"/api/v1/tasks/{quiet.json()['task_id']}").json()["darkroom"]["runtime"]


def test_a_clip_previews_its_middle_frame(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        r = c.post("/api/v1/videos/generate", json={
            "model": "sora-2", "prompt": "waves", "image_urls": [data_url(png_bytes((64, 64)))], "resolution": "240p",
            "duration": 4, "num_inference_steps": 12, "previews": True})
        assert r.status_code == 202, r.text
        events = _events(c, r.json()["task_id"])
        previews = [d for k, d in events if k == "progress" and "preview" in d]
        assert previews and events[-1][0] == "completed"
        _jpeg_of(previews[-1]["preview"]["image"])
