"""fal, Replicate, Black Forest Labs and Gemini dialects, each with its provider's own client where that client
can be pointed at another host (replicate, google-genai) and raw HTTP following the documented protocol where it
cannot (fal-client hard-codes https://fal.run; BFL has no official Python client). Webhooks go to a receiver on
loopback: retried after a 500, signature verified. Each provider's own key header is used."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import API_KEY
from tests.support import ServerProcess

KEY = API_KEY


@pytest.fixture
def srv(keyed_server: ServerProcess) -> ServerProcess:
    """The keyed server: loopback is allowlisted there, so the webhook receiver below can be reached."""
    return keyed_server


class Receiver:
    """A webhook receiver on loopback that fails the first `fail_first` deliveries with 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if len(outer.calls) <= outer.fail_first else 200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def wait(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.calls) >= n, self.calls

    def close(self) -> None:
        self.server.shutdown()


def _png(size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _data_url() -> str:
    return "data:image/png;base64," + base64.b64encode(_png()).decode()


def _verify(headers: dict[str, str], body: bytes, secret: str) -> bool:
    expected = hmac.new(secret.encode(), headers["x-darkroom-timestamp"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-darkroom-signature"], f"sha256={expected}")


def _key_secret() -> str:
    return hmac.new(KEY.encode(), b"darkroom-webhook-v1", hashlib.sha256).hexdigest()


def _poll(c: httpx.Client, url: str, done: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = c.get(url).json()
        if done(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{url} never finished")


# ---- fal ------------------------------------------------------------------------------------------------

def test_fal_queue_status_result_and_a_retried_signed_webhook(srv: ServerProcess) -> None:
    hook = Receiver(fail_first=1)
    try:
        with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Key {KEY}"}, timeout=60) as c:
            r = c.post("/fal-ai/flux-pro/kontext", params={"fal_webhook": hook.url},
                       json={"prompt": "add a hat", "image_url": _data_url(), "num_inference_steps": 2,
                             "safety_tolerance": "2"})
            assert r.status_code == 200, r.text
            sub = r.json()
            assert sub["status"] == "IN_QUEUE" and {"request_id", "status_url", "response_url", "cancel_url"} <= set(sub)
            _poll(c, sub["status_url"], lambda b: b["status"] == "COMPLETED")
            result = c.get(sub["response_url"]).json()
            assert result["images"][0]["content_type"] == "image/png" and result["has_nsfw_concepts"] == [False]
            assert any("safety_tolerance" in w for w in result["darkroom"]["warnings"])
            assert c.put(sub["cancel_url"]).json()["status"] == "ALREADY_COMPLETED"
            hook.wait(2)
            headers, body = hook.calls[-1]
            payload = json.loads(body)
            assert payload["status"] == "OK" and payload["request_id"] == sub["request_id"]
            assert payload["payload"]["images"][0]["url"] == result["images"][0]["url"]
            assert _verify(headers, body, _key_secret())
            # The receiver holds the body before the server hears its 200 back and records the attempt.
            task = _poll(c, f"/api/v1/tasks/{sub['request_id']}",
                         lambda b: len(b["darkroom"]["webhook"]["attempts"]) >= 2)
            attempts = task["darkroom"]["webhook"]["attempts"]
            assert [a.get("status_code") for a in attempts] == [500, 200]
            assert task["darkroom"]["webhook"]["delivered"] == ["completed"] and "secret" not in task["darkroom"]["webhook"]
    finally:
        hook.close()


def test_fal_sync_mode_and_refusals(srv: ServerProcess) -> None:
    with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Key {KEY}"}, timeout=60) as c:
        r = c.post("/sync/fal-ai/nano-banana-2/edit", json={"prompt": "x", "image_urls": [_data_url()],
                                                            "num_inference_steps": 1, "sync_mode": True,
                                                            "resolution": "1K", "num_images": 2})
        assert r.status_code == 200, r.text
        assert [im["url"][:22] for im in r.json()["images"]] == ["data:image/png;base64,"] * 2
        r = c.post("/fal-ai/flux-pro/kontext", json={"prompt": "x", "enhance_prompt": True})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "enhance_prompt"]
        r = c.post("/fal-ai/not/a-model", json={"prompt": "x"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_model"
        r = c.post("/fal-ai/flux-pro/kontext", json={"prompt": "x"}, params={"fal_webhook": "http://10.0.0.1/x"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "url_not_allowed"


def test_fal_start_deadline_and_no_retry_headers(srv: ServerProcess) -> None:
    """X-Fal-Request-Timeout: a request no worker starts in time ends with fal's 504 (request_timeout, user);
    x-fal-no-retry is recorded on the job; a malformed deadline is a 422 naming the header."""
    with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Key {KEY}"}, timeout=60) as c:
        busy = c.post("/fal-ai/bytedance/seedream/v4/edit", json={
            "prompt": "x", "image_urls": [_data_url()], "num_inference_steps": 30, "resolution": "1K"})
        assert busy.status_code == 200, busy.text
        late = c.post("/fal-ai/nano-banana/edit", json={"prompt": "x", "image_urls": [_data_url()]},
                      headers={"X-Fal-Request-Timeout": "0.3", "x-fal-no-retry": "1", "X-Fal-Store-IO": "0"})
        rid = late.json()["request_id"]
        deadline = time.monotonic() + 120
        while c.get(f"/fal-ai/nano-banana/requests/{rid}/status").json()["status"] != "COMPLETED":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        r = c.get(f"/fal-ai/nano-banana/requests/{rid}")
        assert r.status_code == 504 and r.headers["X-Fal-Error-Type"] == "request_timeout", r.text
        assert r.headers["X-Fal-Request-Timeout-Type"] == "user" and r.json()["error"]["code"] == "start_timeout"
        task = c.get(f"/api/v1/tasks/{rid}", headers={"X-API-Key": KEY}).json()
        assert task["status"] == "failed" and task["error"]["code"] == "start_timeout"
        assert any(w.startswith("X-Fal-Store-IO") for w in task["warnings"])  # accepted, and said to be ignored
        r = c.post("/fal-ai/nano-banana/edit", json={"prompt": "x", "image_urls": [_data_url()]},
                   headers={"X-Fal-Request-Timeout": "soon"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "X-Fal-Request-Timeout"


# ---- Replicate --------------------------------------------------------------------------------------------

def test_replicate_client_run_and_predictions(srv: ServerProcess) -> None:
    import replicate

    client = replicate.Client(api_token=KEY, base_url=srv.base_url)
    url = client.run("black-forest-labs/flux-kontext-pro",
                     input={"prompt": "x", "input_image": _data_url(), "aspect_ratio": "1:1", "output_format": "jpg"})
    assert isinstance(url, str)
    got = httpx.get(url, headers={"Authorization": f"Bearer {KEY}"})
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    pred = client.predictions.create(model="bytedance/seedream-4",
                                     input={"prompt": "x", "image_input": [_data_url()], "size": "1K"})
    pred.wait()
    assert pred.status == "succeeded" and isinstance(pred.output, list) and len(pred.output) == 1
    assert pred.progress is not None and pred.progress.percentage == 1.0  # the SDK parses the logs' progress line
    assert pred.progress.current == pred.progress.total > 0 and pred.logs.startswith("Using seed: ")
    with pytest.raises(replicate.exceptions.ReplicateError) as exc:
        client.predictions.create(model="google/nano-banana", input={"prompt": "x", "prompt_upsampling": True})
    assert exc.value.status == 422


def test_replicate_stream_sends_logs_then_the_output(srv: ServerProcess) -> None:
    """replicate.stream(): the prediction's urls.stream carries the seed and progress as `logs`, each output URL as
    `output`, then `done` -- the SDK's own event decoder reads every event."""
    import replicate

    client = replicate.Client(api_token=KEY, base_url=srv.base_url)
    events = list(client.stream("black-forest-labs/flux-kontext-pro", input={
        "prompt": "x", "input_image": _data_url(), "seed": 12, "output_format": "png"}, use_file_output=False))
    kinds = [e.event.value for e in events]
    assert kinds[-1] == "done" and kinds.count("output") == 1 and kinds.index("output") > kinds.index("logs")
    logs = [e.data for e in events if e.event.value == "logs"]
    assert logs[0] == "Using seed: 12" and logs[-1].strip().startswith("100%|")
    output = next(e.data for e in events if e.event.value == "output")
    assert httpx.get(output).status_code == 200


def test_replicate_webhook_events_filter(srv: ServerProcess) -> None:
    hook = Receiver()
    try:
        with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            r = c.post("/v1/predictions", json={"version": "google/nano-banana-2", "webhook": hook.url,
                                                "webhook_events_filter": ["start", "completed"],
                                                "input": {"prompt": "x", "image_input": [_data_url()]}})
            assert r.status_code == 201, r.text
            pid = r.json()["id"]
            assert r.json()["urls"]["get"].endswith(f"/v1/predictions/{pid}")
            hook.wait(2)
        bodies = [json.loads(b) for _, b in hook.calls]
        assert bodies[0]["status"] in ("starting", "processing", "succeeded") and bodies[-1]["status"] == "succeeded"
        assert bodies[-1]["id"] == pid and bodies[-1]["model"] == "google/nano-banana-2"
        assert all(_verify(h, b, _key_secret()) for h, b in hook.calls)
    finally:
        hook.close()


# ---- Black Forest Labs -----------------------------------------------------------------------------------

def test_bfl_submit_poll_and_webhook_with_its_own_secret(srv: ServerProcess) -> None:
    hook = Receiver()
    try:
        with httpx.Client(base_url=srv.base_url, headers={"x-key": KEY}, timeout=60) as c:
            r = c.post("/v1/flux-kontext-pro", json={"prompt": "x", "input_image": base64.b64encode(_png()).decode(),
                                                     "input_image_2": _data_url(), "seed": 5, "steps": 2,
                                                     "webhook_url": hook.url, "webhook_secret": "per-request-secret"})
            assert r.status_code == 200, r.text
            done = _poll(c, r.json()["polling_url"], lambda b: b["status"] != "Pending")
            assert done["status"] == "Ready" and done["result"]["seed"] == 5
            assert c.get(done["result"]["sample"]).status_code == 200
            assert c.get("/v1/get_result", params={"id": "task_nope"}).json()["status"] == "Task not found"
            r = c.post("/v1/flux-kontext-pro", json={"prompt": "x", "prompt_upsampling": True})
            assert r.status_code == 422 and r.json()["detail"]
            hook.wait(1)
        headers, body = hook.calls[0]
        assert json.loads(body)["status"] == "Ready" and _verify(headers, body, "per-request-secret")
    finally:
        hook.close()


def test_bfl_klein_9b_and_result_urls_valid_for_ten_minutes(srv: ServerProcess) -> None:
    from urllib.parse import parse_qs, urlparse

    with httpx.Client(base_url=srv.base_url, headers={"x-key": KEY}, timeout=60) as c:
        r = c.post("/v1/flux-2-klein-9b", json={"prompt": "x", "width": 256, "height": 256, "seed": 2})
        assert r.status_code == 200, r.text
        done = _poll(c, r.json()["polling_url"], lambda b: b["status"] != "Pending")
        assert done["status"] == "Ready"
        task = c.get(f"/api/v1/tasks/{done['id']}", headers={"X-API-Key": KEY}).json()
        assert task["model"] == "vertex/nano-banana-flash"
        exp = int(parse_qs(urlparse(done["result"]["sample"]).query)["exp"][0])
        assert abs(exp - (task["completed_at"] + 600)) <= 1  # BFL's 10 minutes, from the result's readiness
        assert httpx.get(done["result"]["sample"]).status_code == 200  # no key needed within them


# ---- Gemini -------------------------------------------------------------------------------------------------

def test_gemini_sdk_generate_content(srv: ServerProcess) -> None:
    from google import genai
    from google.genai import errors, types

    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=srv.base_url))
    resp = client.models.generate_content(
        model="gemini-3.1-flash-image-preview",
        contents=["make it blue", types.Part.from_bytes(data=_png(), mime_type="image/png")],
        config=types.GenerateContentConfig(response_modalities=["IMAGE"],
                                           image_config=types.ImageConfig(aspect_ratio="16:9", image_size="1K")),
    )
    part = resp.candidates[0].content.parts[0]  # type: ignore[index, union-attr]
    assert part.inline_data.mime_type == "image/png"  # type: ignore[union-attr]
    assert Image.open(io.BytesIO(part.inline_data.data)).size == (1024, 576)  # type: ignore[union-attr, arg-type]
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_content(model="gemini-3-pro-image-preview", contents=["x"],
                                       config=types.GenerateContentConfig(
                                           tools=[types.Tool(google_search=types.GoogleSearch())]))
    assert exc.value.code == 422 and "offline" in (exc.value.message or "")


def test_gemini_rest_snake_case(srv: ServerProcess) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "a boat"}, {"inline_data": {
        "mime_type": "image/png", "data": base64.b64encode(_png()).decode()}}]}],
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "1:1"},
                             "candidateCount": 2, "temperature": 0.7}}
    with httpx.Client(base_url=srv.base_url, headers={"x-goog-api-key": KEY}, timeout=60) as c:
        r = c.post("/v1beta/models/gemini-3.1-flash-image-preview:generateContent", json=body)
        assert r.status_code == 200, r.text
        assert len(r.json()["candidates"]) == 2
        assert any("temperature" in w for w in r.json()["darkroom"]["warnings"])
        r = c.post("/v1beta/models/gemini-9:generateContent", json=body)
        assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"  # as Gemini answers


def test_native_webhook_url_never_to_private_addresses(srv: ServerProcess) -> None:
    with httpx.Client(base_url=srv.base_url, headers={"X-API-Key": KEY}, timeout=60) as c:
        for url in ("http://169.254.169.254/latest", "http://10.1.2.3/hook", "file:///etc/passwd",
                    "http://user:pw@127.0.0.1/hook"):
            r = c.post("/api/v1/images/generate", json={"model": "seedream-4.0", "prompt": "x", "quality": "512",
                                                         "celery": True, "webhook_url": url})
            assert r.status_code == 422 and r.json()["error"]["field"] == "webhook_url", url


REFUSALS = [
    ("/v1/images/generations", {"Authorization": f"Bearer {KEY}"}, {"prompt": "x", "style": "vivid"}, "style"),
    ("/v1/images/generations", {"Authorization": f"Bearer {KEY}"}, {"prompt": "x", "partial_images": 2},
     "partial_images"),  # partial images without stream=true
    ("/v1/images/generations", {"Authorization": f"Bearer {KEY}"}, {"prompt": "x", "stream": True,
                                                                    "partial_images": 4}, "partial_images"),
    ("/fal-ai/nano-banana-2/edit", {"Authorization": f"Key {KEY}"}, {"prompt": "x", "enable_web_search": True},
     "enable_web_search"),
    ("/v1/models/google/nano-banana/predictions", {"Authorization": f"Token {KEY}"},
     {"input": {"prompt": "x", "enhance_prompt": True}}, "input.enhance_prompt"),
    ("/v1/models/google/nano-banana/predictions", {"Authorization": f"Bearer {KEY}"},
     {"input": {"prompt": "x", "output_quality": 80}}, "input.output_quality"),
    ("/v1beta/models/gemini-3-pro-image-preview:generateContent", {"x-goog-api-key": KEY},
     {"contents": [{"parts": [{"text": "x"}, {"file_data": {"file_uri": "gs://b/o"}}]}]}, "contents.parts[1]"),
    ("/v1/flux-2-pro", {"x-key": KEY}, {"prompt": "x", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("path", "headers", "body", "field"), REFUSALS)
def test_refused_fields_are_4xx_naming_the_field(srv: ServerProcess, path: str, headers: dict[str, str],
                                                 body: dict[str, Any], field: str) -> None:
    r = httpx.post(f"{srv.base_url}{path}", json=body, headers=headers, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.text


def test_replicate_files_api_and_model_reads_with_the_sdk(srv: ServerProcess, tmp_path: Any) -> None:
    """replicate.run with an open file uploads it to /v1/files first and sends its URL; models.get and versions
    read the model; files are the uploading key's alone and can be deleted."""
    import replicate

    src = tmp_path / "src.png"
    src.write_bytes(_png((96, 64)))
    client = replicate.Client(api_token=KEY, base_url=srv.base_url)
    with src.open("rb") as fh:
        url = client.run("black-forest-labs/flux-kontext-pro",
                         input={"prompt": "add a hat", "input_image": fh, "aspect_ratio": "1:1"})
    assert httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    uploaded = client.files.create(src, metadata={"shot": "12A"})
    assert uploaded.size == src.stat().st_size and uploaded.checksums["sha256"] == hashlib.sha256(
        src.read_bytes()).hexdigest()
    assert uploaded.expires_at and uploaded.metadata == {"shot": "12A"}
    assert client.files.get(uploaded.id).name == "src.png"
    assert uploaded.id in [f.id for f in client.files.list()]
    got = httpx.get(f"{srv.base_url}/v1/files/{uploaded.id}/download", headers={"Authorization": f"Bearer {KEY}"})
    assert got.content == src.read_bytes()

    model = client.models.get("bytedance/seedream-4")
    assert (model.owner, model.name) == ("bytedance", "seedream-4") and model.latest_version is not None
    assert [v.id for v in model.versions.list().results] == [model.latest_version.id]
    assert "prompt" in model.latest_version.openapi_schema["components"]["schemas"]["Input"]["properties"]
    pred = client.predictions.create(version=model.latest_version.id,
                                     input={"prompt": "x", "image_input": [uploaded.urls["get"]], "size": "1K"})
    pred.wait()
    assert pred.status == "succeeded", pred.error
    task = httpx.get(f"{srv.base_url}/api/v1/tasks/{pred.id}", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert task["darkroom"]["task"] == "edit" and (task["width"], task["height"]) == (1024, 683)  # the file's 3:2

    assert client.files.delete(uploaded.id)
    with pytest.raises(replicate.exceptions.ReplicateError) as exc:
        client.files.get(uploaded.id)
    assert exc.value.status == 404
    with pytest.raises(replicate.exceptions.ReplicateError) as exc:
        client.models.get("acme/not-served")
    assert exc.value.status == 404
    # A deleted file's URL in a prediction is a clear 422 naming the file (never a fetch to ourselves).
    r = httpx.post(f"{srv.base_url}/v1/models/bytedance/seedream-4/predictions",
                   headers={"Authorization": f"Bearer {KEY}"},
                   json={"input": {"prompt": "x", "image_input": [uploaded.urls["get"]]}})
    assert r.status_code == 422 and uploaded.id in r.json()["detail"]
