"""POST /api/v1/images/generate end to end on a real server with tiny real pipelines."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from server.catalog import QUALITY_LONG_SIDE
from server.engine.sizing import exact_image_size
from tests.conftest import API_KEY
from tests.packaged import packaged_config
from tests.support import ServerProcess, data_url, decode_png_size, image_host, png_bytes

CATALOG = packaged_config().catalog
MODELS = ["flux-kontext-pro", "flux-kontext-max", "seedream-4.0", "vertex/nano-banana-flash",
          "vertex/nano-banana-pro", "nano-banana", "nano-banana-2"]
# Few steps keep CPU time down; SDXL runs int(steps * strength) steps, so keep that >= 1.
SPECS = {mid: CATALOG.get(mid) for mid in MODELS}


def _lowest_quality(model: str) -> str:
    return min(SPECS[model].quality, key=QUALITY_LONG_SIDE.__getitem__)


def _size(model: str, ratio: tuple[int, int], quality: str | None = None) -> tuple[int, int]:
    """What the client gets: the tier's long side and the ratio's exact short side (whatever the model's grid)."""
    return exact_image_size(QUALITY_LONG_SIDE[quality or _lowest_quality(model)], ratio)


def _generate(client: httpx.Client, **body: Any) -> httpx.Response:
    # Few steps and the smallest tier keep CPU time down; SDXL runs int(steps * strength) steps, so keep it >= 1.
    fast = {"quality": _lowest_quality(body["model"]), "num_inference_steps": 2}
    return client.post("/api/v1/images/generate", json={**fast, **body})


def _poll(client: httpx.Client, task_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/api/v1/tasks/{task_id}").json()
        if view["status"] in ("completed", "failed"):
            return view
        assert view["status"] in ("pending", "processing")
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish")


def _check_images(client: httpx.Client, body: dict[str, Any], n: int, size: tuple[int, int]) -> list[bytes]:
    assert len(body["images"]) == n
    out = []
    for img in body["images"]:
        assert (img["width"], img["height"]) == size
        r = client.get(img["url"])
        assert r.status_code == 200
        assert r.headers["content-type"] == img["content_type"]
        assert decode_png_size(r.content) == size
        out.append(r.content)
    assert body["usage"]["images_generated"] == n
    return out


def test_models_endpoint_describes_every_id(server: ServerProcess) -> None:
    with server.client() as c:
        models = {m["id"]: m for m in c.get("/api/v1/images/models").json()["models"]}
    assert set(models) == set(MODELS)
    for m in models.values():
        for key in ("capabilities", "quality", "imageSize", "maxNumImages", "defaultNumImages",
                    "maxReferenceImages", "supportsSeed"):
            assert key in m
        assert m["local"]["weights_kind"] == "demo"
        assert "demo" in m["local"]["demo_notice"]
    assert models["flux-kontext-pro"]["local"]["license"].startswith("FLUX.1 [dev] Non-Commercial")
    assert models["seedream-4.0"]["local"]["commercial_use"] is True


@pytest.mark.parametrize("model", MODELS)
def test_sync_edit_returns_images(server: ServerProcess, model: str) -> None:
    with server.client() as c:
        r = _generate(c, model=model, prompt="make the wall blue", image_urls=[data_url(png_bytes((120, 80)))],
                      num_inference_steps=2)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["task_id"].startswith("task_") and body["prompt"] == "make the wall blue"
        # auto aspect: the 3:2 source decides the shape; each family rounds to its own grid.
        _check_images(c, body, 1, _size(model, (120, 80)))
        assert body["darkroom"]["runtime"]["demo_weights"] is True
        assert any("demo weights" in w for w in body["warnings"])


# The queue, progress and polling are the engine's, not a family's: two families with different step callbacks
# (every id's text-only and edit paths run in test_lineup.py).
@pytest.mark.parametrize("model", ["flux-kontext-pro", "nano-banana-2"])
def test_async_task_lifecycle(server: ServerProcess, model: str) -> None:
    with server.client() as c:
        r = _generate(c, model=model, prompt="a lighthouse", image_urls=[data_url(png_bytes())], celery=True,
                      num_inference_steps=2, aspect_ratio="1:1")
        assert r.status_code == 202, r.text
        assert r.json()["status"] in ("pending", "processing")
        view = _poll(c, r.json()["task_id"])
        assert view["status"] == "completed", view
        _check_images(c, view, 1, _size(model, (1, 1)))
        assert view["progress"]["step"] == view["progress"]["total"] > 0


@pytest.mark.parametrize("model", ["flux-kontext-pro", "seedream-4.0", "nano-banana-2"])
def test_mask_runs_inpaint(server: ServerProcess, model: str) -> None:
    src = data_url(png_bytes((128, 128)))
    mask = data_url(png_bytes((128, 128), mode="L"))
    extra = {"reference_images": [data_url(png_bytes((64, 64), (0, 200, 0)))]}
    with server.client() as c:
        r = _generate(c, model=model, prompt="a hat", image_urls=[src], mask_url=mask, strength=0.8,
                      num_inference_steps=4, **extra)
        assert r.status_code == 200, r.text
        assert r.json()["darkroom"]["task"] == "inpaint"
        _check_images(c, r.json(), 1, _size(model, (1, 1)))


def test_kontext_reference_without_mask_is_stitched_edit(server: ServerProcess) -> None:
    with server.client() as c:
        r = _generate(c, model="flux-kontext-pro", prompt="put the logo on the mug",
                      image_urls=[data_url(png_bytes((128, 128)))],
                      reference_images=[data_url(png_bytes((64, 64), (0, 0, 255)))])
        assert r.status_code == 200, r.text
        assert r.json()["darkroom"]["task"] == "edit"


def test_multipart_upload(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/api/v1/images/generate",
                   data={"model": "flux-kontext-pro", "prompt": "x", "quality": "512", "num_inference_steps": "2",
                         "seed": "11", "output_format": "webp"},
                   files=[("image", ("src.png", png_bytes((100, 100)), "image/png"))])
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["seed"] == 11 and body["images"][0]["content_type"] == "image/webp"
        assert c.get(body["images"][0]["url"]).content[8:12] == b"WEBP"


def test_url_intake_from_allowlisted_loopback_host(keyed_server: ServerProcess) -> None:
    routes = {"/src.png": (200, {"Content-Type": "image/png"}, png_bytes((64, 128))),
              "/moved": (302, {"Location": "/src.png"}, b""),
              "/elsewhere": (302, {"Location": "http://localhost:9/src.png"}, b""),
              "/huge": (200, {"Content-Type": "image/png"}, b"\0" * 300_000)}
    with image_host(routes) as (base, hits), keyed_server.client(headers={"X-API-Key": API_KEY}) as c:
        r = _generate(c, model="flux-kontext-pro", prompt="x", image_urls=[f"{base}/src.png"])
        assert r.status_code == 200, r.text
        assert (r.json()["width"], r.json()["height"]) == (256, 512)  # auto follows the 1:2 source
        r = _generate(c, model="flux-kontext-pro", prompt="x", image_urls=[f"{base}/moved"])
        assert r.status_code == 200, r.text  # same-host redirect followed
        r = _generate(c, model="flux-kontext-pro", prompt="x", image_urls=[f"{base}/elsewhere"])
        assert r.status_code == 422 and r.json()["error"]["code"] == "url_not_allowed"
        r = _generate(c, model="flux-kontext-pro", prompt="x", image_urls=[f"{base}/huge"])
        assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
        r = _generate(c, model="flux-kontext-pro", prompt="x", image_urls=[f"{base}/missing.png"])
        assert r.status_code == 422 and r.json()["error"]["code"] == "fetch_failed"
    assert "/src.png" in hits


def test_output_urls_are_signed_capability_urls(keyed_server: ServerProcess) -> None:
    """On a keyed server an output URL works without the key (an <img src>, a CDN, requests.get), like the hosted
    providers'; a tampered, borrowed or unsigned one does not, and every front end on the store signs alike."""
    import urllib.parse

    with keyed_server.client(headers={"X-API-Key": API_KEY}) as c:
        view = c.post("/api/v1/images/generate", json={"model": "flux-kontext-pro", "prompt": "signed",
                                                         "quality": "512", "num_inference_steps": 2}).json()
        other = c.post("/api/v1/images/generate", json={"model": "flux-kontext-pro", "prompt": "other",
                                                          "quality": "512", "num_inference_steps": 2}).json()
    url = urllib.parse.urlsplit(view["images"][0]["url"])
    query = dict(urllib.parse.parse_qsl(url.query))
    expires = view["darkroom"]["files_expire_at"]
    assert int(query["exp"]) == int(expires) and len(query["sig"]) == 64
    anonymous = httpx.get(view["images"][0]["url"])
    assert anonymous.status_code == 200 and anonymous.headers["content-type"] == "image/png"
    assert httpx.get(view["images"][0]["url"], headers={"Range": "bytes=0-9"}).status_code == 206
    name = url.path.rsplit("/", 1)[1]
    base = f"{keyed_server.base_url}/files/"
    other_name = urllib.parse.urlsplit(other["images"][0]["url"]).path.rsplit("/", 1)[1]
    refused = {
        "unsigned": base + name,
        "tampered": f"{base}{name}?exp={query['exp']}&sig={'0' * 64}",
        "longer_life": f"{base}{name}?exp={int(query['exp']) + 86400}&sig={query['sig']}",
        "another_file": f"{base}{other_name}?exp={query['exp']}&sig={query['sig']}",
    }
    for why, bad in refused.items():
        r = httpx.get(bad)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (why, r.text)
    assert httpx.get(base + name, headers={"X-API-Key": API_KEY}).status_code == 200  # a key still works
    # Past its expiry a signed URL answers 410 expired, as the file itself will once the sweeper removes it.
    import sqlite3

    from server.media.signing import UrlSigner

    with sqlite3.connect(keyed_server.data_dir / "jobs.sqlite3") as db:
        (secret,) = db.execute("SELECT value FROM secrets WHERE name = 'output-urls'").fetchone()
    late = httpx.get(f"{base}{name}?{UrlSigner(secret).query(name, time.time() - 60)}")
    assert late.status_code == 410 and late.json()["error"]["code"] == "expired"


def test_private_urls_refused_by_default(server: ServerProcess) -> None:
    routes = {"/src.png": (200, {"Content-Type": "image/png"}, png_bytes())}
    with image_host(routes) as (base, hits), server.client() as c:
        r = _generate(c, model="flux-kontext-pro", prompt="x", image_urls=[f"{base}/src.png"])
        assert r.status_code == 422 and r.json()["error"]["code"] == "url_not_allowed"
    assert hits == []  # refused before any connection


def test_same_seed_gives_identical_bytes(server: ServerProcess) -> None:
    body = {"model": "flux-kontext-pro", "prompt": "same", "image_urls": [data_url(png_bytes())], "seed": 1234}
    with server.client() as c:
        first = _generate(c, **body).json()
        second = _generate(c, **body).json()
        assert first["task_id"] != second["task_id"]
        a = c.get(first["images"][0]["url"]).content
        b = c.get(second["images"][0]["url"]).content
        assert a == b
        other = c.get(_generate(c, **{**body, "seed": 1235}).json()["images"][0]["url"]).content
        assert other != a


def test_seed_is_recorded_when_not_given(server: ServerProcess) -> None:
    with server.client() as c:
        r = _generate(c, model="seedream-4.0", prompt="x", num_images=2, celery=True)
        view = _poll(c, r.json()["task_id"])
        seeds = view["seeds"]
        assert len(seeds) == 2 and seeds[1] == (seeds[0] + 1) % 2**32
        assert [im["seed"] for im in view["images"]] == seeds
        # Replaying with the recorded seed reproduces the first image exactly.
        again = _generate(c, model="seedream-4.0", prompt="x", num_images=2, seed=seeds[0]).json()
        assert c.get(again["images"][0]["url"]).content == c.get(view["images"][0]["url"]).content


@pytest.mark.parametrize(("fmt", "ctype"), [("jpeg", "image/jpeg"), ("jpg", "image/jpeg"), ("png", "image/png")])
def test_output_formats(server: ServerProcess, fmt: str, ctype: str) -> None:
    with server.client() as c:
        r = _generate(c, model="flux-kontext-pro", prompt="x", output_format=fmt)
        assert r.status_code == 200
        assert r.json()["images"][0]["content_type"] == ctype


def test_image_urls_follow_the_host_the_client_used(server: ServerProcess) -> None:
    with server.client() as c:
        r = _generate(c, model="flux-kontext-pro", prompt="x", celery=True)
        task = r.json()["task_id"]
        _poll(c, task)
        view = c.get(f"/api/v1/tasks/{task}", headers={"Host": "gpu1.studio.test:8443"}).json()
        assert view["images"][0]["url"].startswith("http://gpu1.studio.test:8443/files/")


def test_hosted_only_fields_are_accepted_with_a_warning(server: ServerProcess) -> None:
    with server.client() as c:
        r = _generate(c, model="flux-kontext-pro", prompt="x", temperature=0.7)
        assert r.status_code == 200
        assert any(w.startswith("temperature") for w in r.json()["warnings"])


def test_jobs_persist_in_sqlite(server: ServerProcess) -> None:
    import sqlite3

    with server.client() as c:
        task = _generate(c, model="flux-kontext-pro", prompt="persist me").json()["task_id"]
    with sqlite3.connect(server.data_dir / "jobs.sqlite3") as db:
        (status,) = db.execute("SELECT status FROM jobs WHERE id = ?", (task,)).fetchone()
    assert status == "completed"
