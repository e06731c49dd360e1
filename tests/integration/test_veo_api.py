"""Veo's long-running operations: google-genai's generate_videos (Vertex AI express mode, an API key and darkroom's
base URL) end to end, and the Gemini API's REST shape (predictLongRunning, operations, the clip's URI)."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import av
import httpx
import pytest

from tests.support import ServerProcess, png_bytes


def _image(colour: tuple[int, int, int]) -> Any:
    from google.genai import types

    return types.Image(image_bytes=png_bytes((96, 64), colour), mime_type="image/png")


def _client(server: ServerProcess) -> Any:
    from google import genai

    return genai.Client(vertexai=True, api_key="unused", http_options={"base_url": server.base_url})


def test_generate_videos_with_first_and_last_frame_through_the_sdk(server: ServerProcess) -> None:
    from google.genai import types

    client = _client(server)
    op = client.models.generate_videos(
        model="veo-3.1-fast-generate-preview",
        source=types.GenerateVideosSource(prompt="a red door turns blue", image=_image((200, 30, 30))),
        config=types.GenerateVideosConfig(last_frame=_image((30, 30, 200)), duration_seconds=4, resolution="240p",
                                          aspect_ratio="16:9", generate_audio=False, seed=11, number_of_videos=1))
    deadline = time.monotonic() + 240
    while not op.done:
        assert time.monotonic() < deadline
        time.sleep(0.5)
        op = client.operations.get(op)
    assert op.error is None, op.error
    mp4 = op.result.generated_videos[0].video.video_bytes
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.height == 240 and not container.streams.audio
    task = httpx.get(f"{server.base_url}/api/v1/tasks/{op.name.rsplit('/', 1)[1]}").json()
    assert task["model"] == "veo-3-fast" and task["seed"] == 11
    assert [i["role"] for i in task["darkroom"]["inputs"]] == ["source", "source"]  # first and last frame


def test_what_the_stand_ins_cannot_do_is_refused_naming_the_field(server: ServerProcess) -> None:
    from google.genai import errors, types

    client = _client(server)
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_videos(model="veo-3.0-generate-001", source=types.GenerateVideosSource(
            prompt="x", image=_image((1, 2, 3))), config=types.GenerateVideosConfig(reference_images=[
                types.VideoGenerationReferenceImage(image=_image((4, 5, 6)), reference_type="asset")]))
    assert exc.value.code == 422 and "reference" in str(exc.value.message)
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_videos(model="veo-3.0-generate-001", source=types.GenerateVideosSource(prompt="x"))
    assert "instances[0].image" in str(exc.value.details)
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_videos(model="veo-9", source=types.GenerateVideosSource(prompt="x",
                                                                                        image=_image((1, 2, 3))))
    assert exc.value.code == 422 and "veo-3.1-generate-preview" in str(exc.value.message)


def test_the_gemini_api_rest_shape(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        r = c.post("/v1beta/models/veo-3.0-fast-generate-001:predictLongRunning", json={
            "instances": [{"prompt": "waves", "image": {"bytesBase64Encoded": base64.b64encode(png_bytes()).decode(),
                                                        "mimeType": "image/png"}}],
            "parameters": {"durationSeconds": 4, "resolution": "240p", "enhancePrompt": True}})
        assert r.status_code == 200, r.text
        name = r.json()["name"]
        assert name.startswith("models/veo-3.0-fast-generate-001/operations/")
        deadline = time.monotonic() + 240
        while not (op := c.get(f"/v1beta/{name}").json())["done"]:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        sample = op["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]
        clip = httpx.get(sample["uri"] + "&alt=media")  # as the Gemini API's files are fetched
        assert clip.status_code == 200 and clip.content[4:8] == b"ftyp"
        task = c.get(f"/api/v1/tasks/{name.rsplit('/', 1)[1]}").json()
        assert any("enhancePrompt" in w for w in task["warnings"])
        r = c.get("/v1beta/models/veo-3/operations/task_nope")
        assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"


