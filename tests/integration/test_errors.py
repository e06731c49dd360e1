"""Every documented error: right status, stable code, a message that says what to change, no leaks."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY
from tests.support import ServerProcess, data_url, png_bytes

OK = {"model": "flux-kontext-pro", "prompt": "x", "quality": "512", "num_inference_steps": 1}


def _assert_error(r: httpx.Response, status: int, code: str, field: str | None = "unset") -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["message"]
    if field != "unset":
        assert err["field"] == field
    # Never a trace or a server path.
    assert "Traceback" not in r.text and "/tmp" not in r.text and "site-packages" not in r.text
    return err


CASES = [
    ("unknown model", {**OK, "model": "vertex/nano-banana-ultra"}, 422, "unknown_model", "model"),
    ("near-miss id", {**OK, "model": "flux-kontext-pro "}, 422, "unknown_model", "model"),
    ("prompt 4001", {**OK, "prompt": "p" * 4001}, 422, "prompt_too_long", "prompt"),
    ("missing prompt", {"model": "flux-kontext-pro"}, 422, "missing_field", "prompt"),
    ("unknown field", {**OK, "strengthh": 0.5}, 422, "unknown_field", "strengthh"),
    ("bad base64", {**OK, "image_urls": ["data:image/png;base64,!!notbase64!!"]}, 400, "invalid_image", "image_urls[0]"),
    ("not an image", {**OK, "image_urls": [data_url(b"no image, just text" * 10)]}, 422, "invalid_image",
     "image_urls[0]"),
    # A GIF signature followed by text declares a 8255x28526 screen: refused from the header, like any bomb.
    ("gif header, text body", {**OK, "image_urls": [data_url(b"GIF89a? no, just text" * 10)]}, 413,
     "image_too_large", "image_urls[0]"),
    ("too many sources", {**OK, "image_urls": [data_url(png_bytes())] * 2}, 422, "too_many_images", "image_urls"),
    ("too many references", {**OK, "model": "seedream-4.0", "reference_images": [data_url(png_bytes())] * 10}, 422,
     "too_many_images", "reference_images"),
    ("aspect ratio", {**OK, "aspect_ratio": "7:3"}, 422, "unsupported_aspect_ratio", "aspect_ratio"),
    ("quality", {**OK, "quality": "4K"}, 422, "unsupported_quality", "quality"),
    ("num_images", {**OK, "num_images": 5}, 422, "invalid_request", "num_images"),
    ("seed range", {**OK, "seed": -1}, 422, "invalid_request", "seed"),
    ("format", {**OK, "output_format": "tiff"}, 422, "invalid_request", "output_format"),
    ("sdxl steps*strength", {**OK, "model": "seedream-4.0", "image_urls": [data_url(png_bytes())],
                             "num_inference_steps": 3, "strength": 0.3}, 422, "invalid_request", "num_inference_steps"),
    ("file url", {**OK, "image_urls": ["file:///etc/passwd"]}, 422, "url_not_allowed", "image_urls[0]"),
    ("metadata url", {**OK, "image_urls": ["http://169.254.169.254/latest/meta-data"]}, 422, "url_not_allowed",
     "image_urls[0]"),
    ("mask without source", {**OK, "mask_url": data_url(png_bytes())}, 422, "missing_field", "image_urls"),
]


@pytest.mark.parametrize(("name", "body", "status", "code", "field"), CASES, ids=[c[0] for c in CASES])
def test_bad_request(server: ServerProcess, name: str, body: dict[str, Any], status: int, code: str,
                     field: str) -> None:
    with server.client() as c:
        _assert_error(c.post("/api/v1/images/generate", json=body), status, code, field)


def test_unknown_model_lists_valid_ids(server: ServerProcess) -> None:
    with server.client() as c:
        err = _assert_error(c.post("/api/v1/images/generate", json={**OK, "model": "x"}), 422, "unknown_model")
    for mid in ("flux-kontext-pro", "flux-kontext-max", "seedream-4.0"):
        assert mid in err["message"]


def test_decoder_text_is_not_echoed(server: ServerProcess) -> None:
    truncated = png_bytes((300, 300))[:200]
    with server.client() as c:
        err = _assert_error(c.post("/api/v1/images/generate", json={**OK, "image_urls": [data_url(truncated)]}),
                            422, "invalid_image")
    assert "0x" not in err["message"]


def test_malformed_bodies(server: ServerProcess) -> None:
    with server.client() as c:
        _assert_error(c.post("/api/v1/images/generate", content=b"{not json",
                             headers={"content-type": "application/json"}), 400, "invalid_request")
        _assert_error(c.post("/api/v1/images/generate", json=[1, 2]), 400, "invalid_request")
        _assert_error(c.post("/api/v1/images/generate", content=b"model=x",
                             headers={"content-type": "text/plain"}), 415, "unsupported_media_type")
        _assert_error(c.post("/api/v1/images/generate", data={**{k: str(v) for k, v in OK.items()}},
                             files=[("photo", ("a.png", png_bytes(), "image/png"))]), 422, "unknown_field", "photo")


def test_unknown_task_is_404_never_done(server: ServerProcess) -> None:
    with server.client() as c:
        err = _assert_error(c.get("/api/v1/tasks/task_1705312200000_abc123"), 404, "not_found", "task_id")
    assert "completed" not in err["message"]


def test_unknown_routes_and_files(server: ServerProcess) -> None:
    with server.client() as c:
        _assert_error(c.get("/api/v1/nothing"), 404, "not_found")
        _assert_error(c.get("/files/..%2F..%2Fetc%2Fpasswd"), 404, "not_found")
        _assert_error(c.get("/files/" + "A" * 32 + ".png"), 404, "not_found")
        _assert_error(c.delete("/api/v1/images/models"), 405, "method_not_allowed")


def test_auth_required_when_key_set(keyed_server: ServerProcess) -> None:
    body = {**OK, "image_urls": [data_url(png_bytes())]}
    with keyed_server.client() as c:
        assert c.get("/health").status_code == 200  # liveness stays open
        _assert_error(c.post("/api/v1/images/generate", json=body), 401, "unauthorized")
        _assert_error(c.post("/api/v1/images/generate", json=body, headers={"X-API-Key": "wrong"}), 401,
                      "unauthorized")
        _assert_error(c.get("/api/v1/images/models", headers={"Authorization": f"Basic {API_KEY}"}), 401,
                      "unauthorized")
        _assert_error(c.get("/ready"), 401, "unauthorized")
        r = c.post("/api/v1/images/generate", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 200, r.text
        url = r.json()["images"][0]["url"]
        assert c.get(url).status_code == 200  # the signed URL handed out is a capability, like a hosted one's
        unsigned = url.split("?", 1)[0]
        _assert_error(c.get(unsigned), 401, "unauthorized")  # without its signature the file needs the key
        assert c.get(unsigned, headers={"X-API-Key": API_KEY}).status_code == 200
        assert c.get("/api/v1/images/models", headers={"X-API-Key": API_KEY}).status_code == 200


def test_base64_without_data_prefix_is_not_a_url(server: ServerProcess) -> None:
    raw = base64.b64encode(png_bytes()).decode()
    with server.client() as c:
        _assert_error(c.post("/api/v1/images/generate", json={**OK, "image_urls": [raw]}), 422, "url_not_allowed")


# ---- what a new user ran into (each failed before its fix) -------------------------------------------------

@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/v1/images/generate", {**OK, "num_images": 100}, "num_images"),
    ("/fal-ai/nano-banana-2/edit", {"prompt": "x", "image_urls": [data_url(png_bytes())], "num_images": 20},
     "num_images"),
    ("/v1/models/google/nano-banana-2/predictions", {"input": {"prompt": "x", "max_images": 20}},
     "input.max_images"),
])
def test_num_images_over_the_limit_names_the_ids_limit(server: ServerProcess, path: str, body: dict[str, Any],
                                                         field: str) -> None:
    with server.client() as c:
        err = _assert_error(c.post(path, json=body), 422, "invalid_request", field)
    assert "1 to 4" in err["message"] and "64" not in err["message"]


def test_url_encoded_edit_says_which_bodies_the_route_takes(server: ServerProcess) -> None:
    with server.client() as c:
        err = _assert_error(c.post("/v1/images/edits", data={"prompt": "x", "model": "gpt-image-1"}), 415,
                            "unsupported_media_type")
    assert "multipart/form-data" in err["message"] and "image_url" in err["message"]


def test_fal_edit_route_needs_its_images(server: ServerProcess) -> None:
    with server.client() as c:
        _assert_error(c.post("/fal-ai/nano-banana/edit", json={"prompt": "x"}), 422, "missing_field", "image_urls")
        _assert_error(c.post("/fal-ai/flux-pro/kontext", json={"prompt": "x"}), 422, "missing_field", "image_url")


def test_gemini_unknown_model_is_404_not_found(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/v1beta/models/gemini-9-ultra:generateContent", json={"contents": [{"parts": [{"text": "x"}]}]})
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    assert "gemini-3-pro-image-preview" in r.json()["error"]["message"]


def test_docs_work_offline_without_a_key(keyed_server: ServerProcess) -> None:
    """/docs and /redoc load their scripts from this server (no CDN), and documentation needs no key."""
    with keyed_server.client() as c:
        for page in ("/docs", "/redoc"):
            r = c.get(page)
            assert r.status_code == 200 and "text/html" in r.headers["content-type"]
            scripts = [s.split('"')[1] for s in r.text.split("src=")[1:]]
            assert scripts and all(s.startswith("/docs-assets/") for s in scripts), scripts
            assert "cdn" not in r.text.lower() and "fonts.googleapis" not in r.text
            for script in scripts:
                assert c.get(script).status_code == 200
        assert c.get("/openapi.json").json()["info"]["title"] == "darkroom"
        _assert_error(c.get("/docs-assets/..%2Fcore.py"), 404, "not_found")
        _assert_error(c.get("/api/v1/images/models"), 401, "unauthorized")  # the API itself stays keyed


def test_each_job_is_logged_when_accepted_and_when_finished(server: ServerProcess) -> None:
    with server.client() as c:
        task = c.post("/api/v1/images/generate", json=OK).json()["task_id"]
    deadline = time.monotonic() + 10
    while f"finished {task}" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [ln for ln in server.log().splitlines() if task in ln]
    assert any(" INFO " in ln and f"accepted {task} flux-kontext-pro" in ln for ln in lines), lines
    assert any(" INFO " in ln and f"finished {task} flux-kontext-pro: completed in" in ln for ln in lines), lines
