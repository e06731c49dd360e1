"""The LoRA library and per-request adapters through a real server: uploads scoped to their key, the operator's
mounted folder, URLs under the URL policy, bad files refused with clear 4xx, every dialect's field (the OpenAI and
Gemini SDKs' extension field for real), jobs that record what ran, and concurrent users with different adapters
merged into shared calls without seeing each other's."""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pipelines.registry import family_class
from tests.conftest import API_KEY, OTHER_KEY
from tests.support import ServerProcess, image_host
from weights.demo_loras import make_adapter

ALICE, BOB = API_KEY, OTHER_KEY
KONTEXT = "flux-kontext-pro"
BASE = {"model": KONTEXT, "prompt": "a red fox", "seed": 3, "quality": "512", "aspect_ratio": "1:1",
        "num_inference_steps": 2}


@dataclass
class Files:
    a: bytes
    b: bytes
    sdxl: bytes
    klein: bytes


@dataclass
class LoraServer:
    proc: ServerProcess
    files: Files
    folder: Path

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.proc.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path, lora_dir: Path,
                keyed_server: ServerProcess) -> LoraServer:
    """The session's keyed server (two keys, a mounted LoRA folder, loopback URLs allowed) and adapters for it."""
    tmp = tmp_path_factory.mktemp("loras")
    kontext = family_class("flux-kontext")
    files = Files(
        a=make_adapter(kontext, demo_dir / "flux1-kontext-dev", tmp / "a", seed=21).read_bytes(),
        b=make_adapter(kontext, demo_dir / "flux1-kontext-dev", tmp / "b", seed=22, rank=8).read_bytes(),
        sdxl=make_adapter(family_class("sdxl"), demo_dir / "sdxl-base-1.0", tmp / "s", seed=23,
                          layout="kohya").read_bytes(),
        klein=make_adapter(family_class("flux2-klein"), demo_dir / "flux2-klein-4b", tmp / "k", seed=24).read_bytes())
    (lora_dir / "studio-style.safetensors").write_bytes(files.a)
    return LoraServer(keyed_server, files, lora_dir)


def _upload(c: httpx.Client, data: bytes, name: str = "adapter.safetensors") -> httpx.Response:
    return c.post("/api/v1/loras", files={"file": (name, data)}, data={"name": name.rsplit(".", 1)[0]})


def _pixels(c: httpx.Client, task: dict[str, object]) -> np.ndarray:
    url = task["images"][0]["url"]  # type: ignore[index]
    return np.asarray(Image.open(io.BytesIO(c.get(url).content))).astype(np.int16)


def _wait(c: httpx.Client, task_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        task = c.get(f"/api/v1/tasks/{task_id}").json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.2)
    raise AssertionError(f"{task_id} did not finish")


def test_upload_list_and_key_isolation(lora_server: LoraServer) -> None:
    with lora_server.client(ALICE) as alice, lora_server.client(BOB) as bob:
        r = _upload(alice, lora_server.files.a, "fox-style.safetensors")
        assert r.status_code == 201, r.text
        record = r.json()
        assert record["family"] == "flux-kontext" and record["rank"] == 4 and record["layout"] == "diffusers"
        assert record["sha256"] == hashlib.sha256(lora_server.files.a).hexdigest()
        assert record["size"] == len(lora_server.files.a) and record["name"] == "fox-style"
        mine = [x["id"] for x in alice.get("/api/v1/loras").json()["data"]]
        assert mine[0] == record["id"] and mine[-1] == "studio-style"  # own uploads first, then the folder
        theirs = [x["id"] for x in bob.get("/api/v1/loras").json()["data"]]
        assert record["id"] not in theirs and theirs[-1] == "studio-style"
        assert bob.get(f"/api/v1/loras/{record['id']}").status_code == 404
        r = bob.post("/api/v1/images/generate", json=BASE | {"loras": [{"id": record["id"]}]})
        assert r.status_code == 404 and r.json()["error"]["field"] == "loras[0].id"
        assert bob.delete(f"/api/v1/loras/{record['id']}").status_code == 404
        assert alice.delete("/api/v1/loras/studio-style").status_code == 409  # the folder is read-only
        assert alice.delete(f"/api/v1/loras/{record['id']}").status_code == 204
        assert alice.get(f"/api/v1/loras/{record['id']}").status_code == 404


def test_bad_files_and_references_are_refused_clearly(lora_server: LoraServer) -> None:
    with lora_server.client(ALICE) as c:
        r = _upload(c, b"PK\x03\x04" + b"\0" * 64, "model.ckpt")
        assert r.status_code == 422 and "pickle" in r.json()["error"]["message"]
        r = _upload(c, b"\x80\x04\x95" + b"\0" * 64, "sneaky.safetensors")  # a pickle stream under a safe name
        assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_media_type"
        r = _upload(c, lora_server.files.a[:-64])
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_lora"
        assert "truncated" in r.json()["error"]["message"]
        r = _upload(c, b"\0" * 600_000)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        sdxl = _upload(c, lora_server.files.sdxl, "sdxl-kohya.safetensors").json()
        assert sdxl["family"] == "sdxl" and sdxl["layout"] == "kohya"
        r = c.post("/api/v1/images/generate", json=BASE | {"loras": [{"id": sdxl["id"]}]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "lora_mismatch"
        assert "sdxl" in r.json()["error"]["message"] and "seedream-4.0" in r.json()["error"]["message"]
        for bad in ("../../etc/passwd", "studio-style/../x", "/abs"):
            r = c.post("/api/v1/images/generate", json=BASE | {"loras": [{"id": bad}]})
            assert r.status_code == 422 and r.json()["error"]["field"] == "loras[0].id", bad
        r = c.post("/api/v1/images/generate", json=BASE | {"loras": [{"id": "studio-style", "url": "http://x"}]})
        assert r.status_code == 422
        r = c.post("/api/v1/images/generate", json=BASE | {"loras": [{"id": "studio-style"}] * 5})
        assert r.status_code == 422 and r.json()["error"]["field"].startswith("loras")
        r = c.post("/api/v1/images/generate", json=BASE | {"loras": [{"id": "studio-style", "scale": 9}]})
        assert r.status_code == 422


def test_jobs_record_their_adapters_and_scale_zero_is_the_base(lora_server: LoraServer) -> None:
    with lora_server.client(ALICE) as c:
        plain = c.post("/api/v1/images/generate", json=BASE).json()
        off = c.post("/api/v1/images/generate", json=BASE | {"loras": [{"id": "studio-style", "scale": 0}]}).json()
        on = c.post("/api/v1/images/generate", json=BASE | {"loras": [{"id": "studio-style"}]}).json()
        assert np.array_equal(_pixels(c, plain), _pixels(c, off))
        assert np.abs(_pixels(c, plain) - _pixels(c, on)).mean() > 0.5
        task = c.get(f"/api/v1/tasks/{on['task_id']}").json()
        recorded = task["darkroom"]["asked"]["loras"]
        assert recorded == [{"id": "studio-style", "url": None, "name": "studio-style", "source": "folder",
                             "sha256": hashlib.sha256(lora_server.files.a).hexdigest(), "scale": 1.0, "rank": 4}]
        assert task["darkroom"]["runtime"]["loras"]["adapters"] == 1
        assert "loras" not in c.get(f"/api/v1/tasks/{plain['task_id']}").json()["darkroom"]["asked"]


def test_concurrent_users_with_different_adapters_share_calls_and_never_mix(lora_server: LoraServer) -> None:
    """Alice (A) and Bob (B) submit interleaved jobs: they merge into shared calls, and each job equals its solo
    render."""
    with lora_server.client(ALICE) as alice, lora_server.client(BOB) as bob:
        a_id = _upload(alice, lora_server.files.a).json()["id"]
        b_id = _upload(bob, lora_server.files.b).json()["id"]
        solo = {"alice": _pixels(alice, alice.post("/api/v1/images/generate",
                                                   json=BASE | {"loras": [{"id": a_id}]}).json()),
                "bob": _pixels(bob, bob.post("/api/v1/images/generate",
                                             json=BASE | {"loras": [{"id": b_id, "scale": 0.8}]}).json())}
        ids = []
        for _ in range(2):
            ids.append(("alice", alice, alice.post("/api/v1/images/generate", json=BASE | {
                "celery": True, "loras": [{"id": a_id}]}).json()["task_id"]))
            ids.append(("bob", bob, bob.post("/api/v1/images/generate", json=BASE | {
                "celery": True, "loras": [{"id": b_id, "scale": 0.8}]}).json()["task_id"]))
        shared = []
        for who, client, task_id in ids:
            task = _wait(client, task_id)
            assert task["status"] == "completed", task
            assert np.abs(_pixels(client, task) - solo[who]).max() <= 2, who
            batch = task["darkroom"]["batch"] or {}
            shared.append(batch.get("size", 1) > 1 and batch.get("shared_call"))
        assert any(shared), "the interleaved jobs never shared a call"
        assert np.abs(solo["alice"] - solo["bob"]).mean() > 0.5


def test_every_dialect_names_adapters(lora_server: LoraServer) -> None:
    files = lora_server.files
    sha = {k: hashlib.sha256(getattr(files, k)).hexdigest() for k in ("a", "b", "sdxl", "klein")}
    with lora_server.client(ALICE) as c, image_host({"/b.safetensors": (200, {}, files.b)}) as (host, hits):
        klein_id = _upload(c, files.klein).json()["id"]
        sdxl_id = _upload(c, files.sdxl).json()["id"]

        def recorded(task_id: str) -> list[dict[str, object]]:
            return _wait(c, task_id)["darkroom"]["asked"]["loras"]

        # fal, on its LoRA endpoint name, with a URL fetched under the URL policy (once: then kept by hash).
        for _ in range(2):
            r = c.post("/fal-ai/flux-kontext-lora/text-to-image", json={
                "prompt": "a fox", "loras": [{"path": f"{host}/b.safetensors", "scale": 0.5}],
                "num_inference_steps": 2, "image_size": "square"})
            assert r.status_code == 200, r.text
            assert recorded(r.json()["request_id"])[0] == {"id": None, "url": f"{host}/b.safetensors",
                                                           "name": "b.safetensors", "sha256": sha["b"],
                                                           "scale": 0.5, "source": "url", "rank": 8}
        assert hits == ["/b.safetensors"]
        # Replicate: lora_weights (a library id) + extra_lora (this server's files API URL).
        upload = c.post("/v1/files", files={"content": ("extra.safetensors", files.a)}).json()
        r = c.post("/v1/models/black-forest-labs/flux-kontext-pro/predictions", headers={"Prefer": "wait"}, json={
            "input": {"prompt": "a fox", "resolution": "512", "lora_weights": "studio-style", "lora_scale": 0.6,
                      "extra_lora": upload["urls"]["get"], "extra_lora_scale": 0.4}})
        assert r.status_code in (200, 201), r.text
        got = recorded(r.json()["id"])
        assert [(x["sha256"], x["scale"]) for x in got] == [(sha["a"], 0.6), (sha["a"], 0.4)]
        with lora_server.client(BOB) as bob:  # that file is Alice's: its URL does not lend it to another key
            r = bob.post("/v1/models/black-forest-labs/flux-kontext-pro/predictions", json={
                "input": {"prompt": "a fox", "lora_weights": upload["urls"]["get"]}})
            assert r.status_code == 422 and r.json()["detail"], r.text
        # BFL: finetune_id + finetune_strength.
        r = c.post("/v1/flux-kontext-pro", json={"prompt": "a fox", "steps": 2, "finetune_id": "studio-style",
                                                  "finetune_strength": 0.9})
        assert r.status_code == 200, r.text
        assert recorded(r.json()["id"])[0]["scale"] == 0.9
        # OpenAI's SDK, through its extra_body.
        from openai import OpenAI

        client = OpenAI(api_key=ALICE, base_url=f"{lora_server.proc.base_url}/v1")
        img = client.images.generate(model="dall-e-2", prompt="a fox", size="512x512", quality="low",
                                     extra_body={"loras": [{"id": sdxl_id, "scale": 1.0}]})
        task_id = img.model_extra["darkroom"]["task_id"]  # type: ignore[index]
        assert recorded(task_id)[0]["sha256"] == sha["sdxl"]
        # Gemini's SDK, through http_options.extra_body.
        from google import genai
        from google.genai import types

        gem = genai.Client(api_key=ALICE, http_options=types.HttpOptions(
            base_url=lora_server.proc.base_url, extra_body={"loras": [{"id": klein_id, "scale": 1.0}]}))
        resp = gem.models.generate_content(model="gemini-3.1-flash-image-preview", contents=["a fox"],
                                           config=types.GenerateContentConfig(response_modalities=["IMAGE"]))
        data = resp.candidates[0].content.parts[0].inline_data.data  # type: ignore[index, union-attr]
        assert Image.open(io.BytesIO(data)).size[0] > 0  # type: ignore[arg-type]
        newest = c.get("/api/v1/tasks", params={"limit": 1}).json()["tasks"][0]
        assert newest["darkroom"]["asked"]["loras"][0]["sha256"] == sha["klein"]
        # A multipart request sends the list as one JSON text field.
        r = c.post("/api/v1/images/generate", data={k: str(v) for k, v in BASE.items()},
                   files={"loras": (None, '[{"id": "studio-style", "scale": 0.5}]')})
        assert r.status_code == 200, r.text
        assert r.json()["darkroom"]["asked"]["loras"][0]["scale"] == 0.5
