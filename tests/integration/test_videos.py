"""Image-to-video over HTTP with tiny real pipelines: MP4s, progress events, cancel, errors."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import av
import httpx
import pytest

from pipelines.registry import family_class
from server.engine.sizing import exact_video_size
from tests.support import ServerProcess, data_url, decode_png_size, png_bytes

FRAME = data_url(png_bytes((320, 180), (30, 90, 200)))
FAST = {"resolution": "240p", "duration": 4, "num_inference_steps": 2}
FAMILY = {"veo-3": "ltx2", "veo-3-fast": "ltx2", "sora-2": "wan2.2-ti2v-5b", "sora-2-pro": "wan2.2-i2v-a14b"}


def _submit(c: httpx.Client, **body: Any) -> dict[str, Any]:
    r = c.post("/api/v1/videos/generate", json={"prompt": "the waves roll in", "image_urls": [FRAME], **FAST, **body})
    assert r.status_code == 202, r.text
    return r.json()


def _wait(c: httpx.Client, task_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = c.get(f"/api/v1/tasks/{task_id}").json()
        if view["status"] in ("completed", "failed", "cancelled"):
            return view
        time.sleep(0.1)
    raise AssertionError(f"{task_id} did not finish")


def _probe(data: bytes) -> dict[str, Any]:
    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return {"codec": video.codec_context.name, "frames": frames, "size": (video.width, video.height),
                "duration": container.duration / 1e6, "audio": [s.codec_context.name for s in container.streams.audio]}


def test_video_models_endpoint(server: ServerProcess) -> None:
    with server.client() as c:
        models = {m["id"]: m for m in c.get("/api/v1/videos/models").json()["models"]}
    assert set(models) == set(FAMILY)
    for mid, m in models.items():
        assert m["local"]["family"] == FAMILY[mid]
        assert m["durations"] == ([4, 6, 8, 12] if mid.startswith("sora") else [4, 6, 8]) and "720p" in m["resolutions"]
    assert models["veo-3"]["supportsAudio"] and not models["sora-2"]["supportsAudio"]
    assert models["sora-2-pro"]["supportsLastFrame"] and not models["sora-2"]["supportsLastFrame"]


@pytest.mark.parametrize(("model", "extra", "audio"), [
    ("veo-3", {}, True),  # audio on by default where the model makes it
    ("veo-3-fast", {"generate_audio": False, "duration": "6s", "fps": 25}, False),
    ("sora-2", {"aspect_ratio": "9:16"}, False),
    ("sora-2-pro", {"fps": 16, "image_urls": [FRAME, data_url(png_bytes((320, 180), (200, 90, 30)))]}, False),
])
def test_each_video_id_end_to_end(server: ServerProcess, model: str, extra: dict[str, Any], audio: bool) -> None:
    with server.client() as c:
        accepted = _submit(c, model=model, **extra)
        view = _wait(c, accepted["task_id"])
        assert view["status"] == "completed", view
        (video,) = view["videos"]
        fam = family_class(FAMILY[model])
        seconds = int(str(extra.get("duration", 4)).rstrip("s"))
        fps = extra.get("fps", 24)
        assert video["num_frames"] == accepted["num_frames"] == fam.valid_frames(seconds * fps)
        assert (video["num_frames"] - 1) % fam.frame_step == 0
        assert video["fps"] == fps and video["has_audio"] is audio
        assert video["duration"] == pytest.approx(video["num_frames"] / fps, abs=1e-3)
        # Exactly the tier's size (240 px short side, the exact ratio), whatever grid the model renders on.
        shape = (9, 16) if extra.get("aspect_ratio") == "9:16" else (320, 180)
        assert (video["width"], video["height"]) == exact_video_size(240, shape)
        rendered = view["darkroom"]["rendered"]
        assert rendered["width"] % fam.size_multiple == 0 and rendered["height"] % fam.size_multiple == 0
        probe = _probe(c.get(video["url"]).content)
        assert probe["codec"] == "h264"
        assert probe["frames"] == video["num_frames"]
        assert probe["size"] == (video["width"], video["height"])
        assert probe["duration"] == pytest.approx(video["duration"], abs=0.05)
        assert probe["audio"] == (["aac"] if audio else [])
        poster = c.get(video["poster"]["url"])
        assert poster.headers["content-type"] == "image/png"
        assert decode_png_size(poster.content) == (video["width"], video["height"])
        assert view["usage"]["videos_generated"] == 1


def test_progress_events_in_order(server: ServerProcess) -> None:
    with server.client() as c:
        task = _submit(c, model="veo-3-fast", num_inference_steps=6)["task_id"]
        events: list[tuple[str, dict[str, Any]]] = []
        with c.stream("GET", f"/api/v1/tasks/{task}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name or "", json.loads(line[6:])))
    names = [n for n, _ in events]
    assert names[0] == "status" and names[-1] == "completed"
    assert set(names[1:-1]) <= {"progress"}
    steps = [d["step"] for n, d in events if n == "progress"]
    assert steps == sorted(steps) and steps and steps[-1] == 6
    assert events[-1][1]["videos"][0]["url"].split("?", 1)[0].endswith(".mp4")


def _wait_running(c: httpx.Client, task: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = c.get(f"/api/v1/tasks/{task}").json()
        if view["status"] == "processing" and view["progress"]["step"] >= 1:
            return
        time.sleep(0.05)
    raise AssertionError("task never started running")


@pytest.mark.parametrize("kind", ["video", "image"])
def test_cancel_running_then_worker_takes_next(server: ServerProcess, kind: str) -> None:
    with server.client() as c:
        if kind == "video":
            task = _submit(c, model="sora-2", num_inference_steps=200)["task_id"]
        else:
            task = c.post("/api/v1/images/generate", json={"model": "flux-kontext-pro", "prompt": "x", "quality": "1K",
                                                            "num_inference_steps": 200, "celery": True}).json()["task_id"]
        _wait_running(c, task)
        r = c.post(f"/api/v1/tasks/{task}/cancel")
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
        view = _wait(c, task)
        assert view["status"] == "cancelled" and view["error"]["code"] == "cancelled"
        assert view["progress"]["step"] < 200
        # The worker is free again: the next job runs to completion.
        nxt = c.post("/api/v1/images/generate", json={"model": "flux-kontext-pro", "prompt": "next", "quality": "512",
                                                       "num_inference_steps": 1})
        assert nxt.status_code == 200, nxt.text
        assert c.post(f"/api/v1/tasks/{task}/cancel").status_code == 409


def test_sync_waiter_learns_of_a_cancel(server: ServerProcess) -> None:
    import threading

    with server.client() as c:
        busy = _submit(c, model="sora-2", num_inference_steps=200)["task_id"]
        answer: dict[str, Any] = {}

        def wait_sync() -> None:
            with server.client() as c2:
                r = c2.post("/api/v1/images/generate", json={"model": "flux-kontext-pro", "prompt": "queued",
                                                              "quality": "512", "num_inference_steps": 1})
                answer["status"], answer["body"] = r.status_code, r.json()

        waiter = threading.Thread(target=wait_sync)
        waiter.start()
        deadline = time.monotonic() + 30
        queued = None
        while queued is None and time.monotonic() < deadline:
            time.sleep(0.1)
            pending = [t for t in _pending_tasks(server) if t != busy]
            queued = pending[0] if pending else None
        assert queued is not None
        assert c.post(f"/api/v1/tasks/{queued}/cancel").status_code == 200
        waiter.join(30)
        assert answer["status"] == 409 and answer["body"]["error"]["code"] == "cancelled"
        c.post(f"/api/v1/tasks/{busy}/cancel")
        assert _wait(c, busy)["status"] == "cancelled"


def _pending_tasks(server: ServerProcess) -> list[str]:
    import sqlite3

    with sqlite3.connect(server.data_dir / "jobs.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT id FROM jobs WHERE status = 'pending' ORDER BY created_at")]


def test_cancel_pending_is_immediate(server: ServerProcess) -> None:
    with server.client() as c:
        busy = _submit(c, model="sora-2", num_inference_steps=200)["task_id"]
        queued = _submit(c, model="veo-3-fast")["task_id"]
        r = c.post(f"/api/v1/tasks/{queued}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        c.post(f"/api/v1/tasks/{busy}/cancel")
        assert _wait(c, busy)["status"] == "cancelled"
        assert c.post("/api/v1/tasks/task_0_missing/cancel").status_code == 404


ERRORS = [
    ({"model": "sora-2", "duration": 5}, "unsupported_duration", "duration"),
    ({"model": "sora-2", "resolution": "1080p"}, "unsupported_resolution", "resolution"),
    ({"model": "sora-2", "aspect_ratio": "4:3"}, "unsupported_aspect_ratio", "aspect_ratio"),
    ({"model": "sora-2", "fps": 30}, "invalid_request", "fps"),
    ({"model": "sora-2", "generate_audio": True}, "unsupported_feature", "generate_audio"),
    ({"model": "sora-2", "image_urls": [FRAME, FRAME]}, "too_many_images", "image_urls"),
    ({"model": "sora-2", "image_urls": []}, "missing_field", "image_urls"),
    ({"model": "veo-3", "image_urls": [data_url(b"not an image at all")]}, "invalid_image", "image_urls[0]"),
    ({"model": "flux-kontext-pro"}, "unknown_model", "model"),
    ({"model": "veo-3", "length": 4}, "unknown_field", "length"),
]


@pytest.mark.parametrize(("body", "code", "field"), ERRORS, ids=[e[1] + ":" + str(e[2]) for e in ERRORS])
def test_video_errors(server: ServerProcess, body: dict[str, Any], code: str, field: str) -> None:
    with server.client() as c:
        r = c.post("/api/v1/videos/generate", json={"prompt": "p", "image_urls": [FRAME], **FAST, **body})
        assert r.status_code in (400, 422), r.text
        err = r.json()["error"]
        assert (err["code"], err["field"]) == (code, field)
        if code == "unsupported_feature":
            assert "veo-3" in err["message"] and "veo-3-fast" in err["message"]
        if code == "unknown_model":
            assert "sora-2-pro" in err["message"]


def test_default_resolution_on_a_cpu_is_the_draft_tier_and_says_so(server: ServerProcess) -> None:
    """On a CPU a default-size clip takes many minutes: no resolution means the 240p draft tier, with a warning;
    an explicit large tier is honoured with a warning of its cost. (A busy worker keeps both queued: only the
    answers to the submits are under test, and cancelling a pending job is immediate.)"""
    with server.client() as c:
        busy = _submit(c, model="sora-2", num_inference_steps=200)["task_id"]
        r = c.post("/api/v1/videos/generate", json={"model": "veo-3", "prompt": "p", "image_urls": [FRAME],
                                                     "duration": 4, "num_inference_steps": 1})
        assert r.status_code == 202, r.text
        draft = r.json()
        assert min(draft["width"], draft["height"]) == 240
        assert any("240p draft tier" in w and "720p" in w for w in draft["warnings"]), draft["warnings"]
        r = c.post("/api/v1/videos/generate", json={"model": "veo-3", "prompt": "p", "image_urls": [FRAME],
                                                     "duration": 4, "resolution": "720p", "num_inference_steps": 1})
        assert r.status_code == 202
        large = r.json()
        assert (large["width"], large["height"]) == (1280, 720)
        assert any("720p clip takes minutes" in w for w in large["warnings"])
        for task in (large["task_id"], draft["task_id"], busy):
            c.post(f"/api/v1/tasks/{task}/cancel")
        assert _wait(c, busy)["status"] == "cancelled"
