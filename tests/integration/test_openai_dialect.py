"""The OpenAI dialect, driven by the official `openai` SDK pointed at darkroom on loopback."""

from __future__ import annotations

import base64
import io
import time

import av
import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import API_KEY
from tests.support import ServerProcess


def _client(server: ServerProcess, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)


def _png(size: tuple[int, int], colour: object = "red", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, "PNG")  # type: ignore[arg-type]
    return buf.getvalue()


def test_generate_returns_b64_images_of_the_asked_size(server: ServerProcess) -> None:
    r = _client(server).images.generate(model="gpt-image-1-mini", prompt="a lighthouse", size="1024x1024", n=2)
    assert len(r.data) == 2 and r.size == "1024x1024" and r.output_format == "png"
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json or ""))) for d in r.data]
    assert [im.size for im in images] == [(1024, 1024)] * 2 and images[0].format == "PNG"
    assert r.model_extra and r.model_extra["darkroom"]["model"] == "vertex/nano-banana-flash"


def test_dall_e_answers_urls_by_default_and_b64_on_request(server: ServerProcess) -> None:
    """OpenAI's default response_format is url for the DALL-E models (GPT Image answers base64 only)."""
    client = _client(server)
    by_default = client.images.generate(model="dall-e-2", prompt="a kite", size="256x256")
    assert by_default.data[0].url and by_default.data[0].b64_json is None
    got = httpx.get(by_default.data[0].url)  # an OpenAI image URL needs no key
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (256, 256)
    asked = client.images.generate(model="dall-e-2", prompt="a kite", size="256x256", response_format="b64_json")
    assert asked.data[0].b64_json and asked.data[0].url is None


def test_edit_with_several_images_and_an_alpha_mask(server: ServerProcess) -> None:
    mask = Image.new("RGBA", (128, 96), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 64, 96))  # left half transparent = editable
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    r = _client(server).images.edit(
        model="gpt-image-1-mini", prompt="add a hat", size="1536x1024", response_format="url",
        image=[("a.png", _png((128, 96)), "image/png"), ("b.png", _png((64, 64), "blue"), "image/png")],
        mask=("m.png", buf.getvalue(), "image/png"),
    )
    assert r.size == "1536x1024" and r.data[0].url
    got = httpx.get(r.data[0].url, timeout=30)
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (1536, 1024)
    task = httpx.get(f"{server.base_url}/api/v1/tasks/{r.model_extra['darkroom']['task_id']}").json()  # type: ignore[index]
    assert task["darkroom"]["task"] == "inpaint"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"background": "transparent"}, "background"),
    ({"output_compression": 50}, "output_compression"),
    ({"model": "dall-e-3"}, "model"),
    ({"size": "32x32"}, "size"),  # below the smallest side any model makes
    ({"size": "5000x1000"}, "size"),  # past the model's largest tier (4K)
    ({"n": 11}, "n"),
])
def test_refusals_are_4xx_with_the_field(server: ServerProcess, kwargs: dict[str, object], field: str) -> None:
    args = {"model": "gpt-image-1-mini", "prompt": "x", **kwargs}
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        _client(server).images.generate(**args)  # type: ignore[arg-type]
    assert exc.value.body["param"] == field and exc.value.body["message"]  # type: ignore[index]


def test_streaming_sends_partial_images_then_the_finished_ones(server: ServerProcess) -> None:
    """The SDK's streaming iterator: partial images (live previews, in the asked format) spread over the render,
    at most partial_images of them, then one completed event per image."""
    events = list(_client(server).images.generate(model="gpt-image-1", prompt="a lighthouse", size="512x512",
                                                  stream=True, partial_images=2, output_format="webp"))
    partial = [e for e in events if e.type == "image_generation.partial_image"]
    done = [e for e in events if e.type == "image_generation.completed"]
    assert 1 <= len(partial) <= 2 and [e.partial_image_index for e in partial] == list(range(len(partial)))
    assert events[-1].type == "image_generation.completed" and len(done) == 1
    for event in partial:
        with Image.open(io.BytesIO(base64.b64decode(event.b64_json))) as im:
            assert im.format == "WEBP" and event.size == f"{im.width}x{im.height}" and max(im.size) == 256
    with Image.open(io.BytesIO(base64.b64decode(done[0].b64_json))) as im:
        assert im.format == "WEBP" and im.size == (512, 512) and done[0].size == "512x512"


def test_streaming_edits_use_the_edit_event_names(server: ServerProcess) -> None:
    stream = _client(server).images.edit(model="gpt-image-1", prompt="add a hat", size="512x512", stream=True,
                                         partial_images=1, image=("a.png", _png((96, 96)), "image/png"))
    kinds = [e.type for e in stream]
    assert kinds[-1] == "image_edit.completed" and set(kinds) <= {"image_edit.partial_image", "image_edit.completed"}
    assert kinds.count("image_edit.partial_image") <= 1


def test_streaming_without_partial_images_sends_only_the_result(server: ServerProcess) -> None:
    events = list(_client(server).images.generate(model="gpt-image-1-mini", prompt="x", size="256x256", n=2,
                                                  stream=True))
    assert [e.type for e in events] == ["image_generation.completed"] * 2


def test_any_size_a_model_can_make_is_returned_exactly(server: ServerProcess) -> None:
    """Hosted APIs return the size asked for: off-grid sizes are rendered on the model's grid and cropped."""
    r = _client(server).images.generate(model="gpt-image-1-mini", prompt="x", size="1000x600", quality="low")
    assert r.size == "1000x600"
    assert Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json or ""))).size == (1000, 600)
    task = httpx.get(f"{server.base_url}/api/v1/tasks/{r.model_extra['darkroom']['task_id']}").json()  # type: ignore[index]
    assert (task["width"], task["height"]) == (1000, 600)
    assert task["darkroom"]["rendered"] == {"width": 992, "height": 592}  # klein's 16 px grid, the same ratio


def test_n_over_the_limit_names_the_models_limit(server: ServerProcess) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        _client(server).images.generate(model="dall-e-2", prompt="x", n=7)
    assert "1 to 4" in exc.value.body["message"] and exc.value.body["param"] == "n"  # type: ignore[index]


def test_video_create_poll_download(server: ServerProcess) -> None:
    client = _client(server)
    video = client.videos.create(model="sora-2", prompt="waves", seconds="4", size="426x240",
                                 input_reference=("f.png", _png((128, 72)), "image/png"))
    assert video.status in ("queued", "in_progress") and video.model == "sora-2"
    deadline = time.monotonic() + 180
    while video.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.5)
        video = client.videos.retrieve(video.id)
    assert video.status == "completed" and video.progress == 100, video.error
    mp4 = client.videos.download_content(video.id).content
    assert mp4[4:8] == b"ftyp"
    assert video.size == "426x240"
    with av.open(io.BytesIO(mp4)) as container:  # exactly the size asked for, not the model's 416x224 grid
        assert (container.streams.video[0].width, container.streams.video[0].height) == (426, 240)
    thumb = client.videos.download_content(video.id, variant="thumbnail").content
    assert thumb[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(openai.UnprocessableEntityError):
        client.videos.create(model="sora-2", prompt="no frame", seconds="4", size="426x240")


def _finished(client: openai.OpenAI, video: object) -> object:
    deadline = time.monotonic() + 180
    while video.status in ("queued", "in_progress") and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.3)
        video = client.videos.retrieve(video.id)  # type: ignore[attr-defined]
    assert video.status == "completed", video.error  # type: ignore[attr-defined]
    return video


def _frames(mp4: bytes) -> int:
    with av.open(io.BytesIO(mp4)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_sora_remix_extend_list_and_delete(server: ServerProcess) -> None:
    """The Videos API beyond create/retrieve with the SDK: a remix keeps the original's shot under a new prompt,
    an extension stores the two clips stitched (seconds is the total), list pages by cursor, delete removes."""
    client = _client(server)
    original = _finished(client, client.videos.create(model="sora-2", prompt="waves", seconds="4", size="426x240",
                                                      input_reference=("f.png", _png((128, 72)), "image/png")))
    remix = _finished(client, client.videos.remix(original.id, prompt="waves at night"))  # type: ignore[attr-defined]
    assert remix.remixed_from_video_id == original.id and remix.prompt == "waves at night"  # type: ignore[attr-defined]
    assert (remix.size, remix.seconds, remix.model) == ("426x240", "4", "sora-2")  # type: ignore[attr-defined]
    clip = client.videos.download_content(original.id).content  # type: ignore[attr-defined]
    # This SDK sends the clip itself (its multipart encoder cannot send video={"id": ...}); the id form is JSON.
    extended = _finished(client, client.videos.extend(prompt="the tide goes out", seconds="4",
                                                      video=("clip.mp4", clip, "video/mp4")))
    by_id = _finished(client, client.post("/videos/extensions", cast_to=openai.types.Video, body={
        "prompt": "the tide goes out", "seconds": "4", "video": {"id": original.id}}))  # type: ignore[attr-defined]
    first = _frames(clip)
    for video in (extended, by_id):
        assert video.seconds == "8" and video.size == "426x240"  # type: ignore[attr-defined]
        both = _frames(client.videos.download_content(video.id).content)  # type: ignore[attr-defined]
        assert both == 2 * first - 1  # the extension's first frame is the original's last, kept once
    queued = client.videos.create(model="sora-2", prompt="w", seconds="4", size="426x240",
                                  input_reference=("f.png", _png((128, 72)), "image/png"))
    with pytest.raises(openai.ConflictError):
        client.videos.remix(queued.id, prompt="too soon")  # not finished: not yet remixable
    httpx.post(f"{server.base_url}/api/v1/tasks/{queued.id}/cancel")  # no clip left rendering behind the test
    ids = [v.id for v in client.videos.list(limit=2)]  # the SDK follows `after` across pages
    assert {original.id, remix.id, extended.id, by_id.id} <= set(ids)  # type: ignore[attr-defined]
    page = client.videos.list(limit=1, order="asc")
    assert len(page.data) == 1 and page.has_more
    assert client.videos.delete(remix.id).deleted  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(remix.id)  # type: ignore[attr-defined]


def test_models_and_the_key_header(keyed_server: ServerProcess) -> None:
    with pytest.raises(openai.AuthenticationError):
        _client(keyed_server, "wrong").models.list()
    ids = [m.id for m in _client(keyed_server, API_KEY).models.list()]
    assert {"gpt-image-1", "gpt-image-1.5", "sora-2"} <= set(ids)
