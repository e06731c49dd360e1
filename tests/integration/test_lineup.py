"""Every image id: every input shape up to the id's maximum, several outputs, limits."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from server.catalog import QUALITY_LONG_SIDE
from tests.packaged import packaged_config
from tests.support import ServerProcess, data_url, png_bytes

CATALOG = packaged_config().catalog
NANO = ["vertex/nano-banana-flash", "vertex/nano-banana-pro", "nano-banana", "nano-banana-2"]
ALL = [*NANO, "seedream-4.0", "flux-kontext-pro", "flux-kontext-max"]


def _images(n: int, size: tuple[int, int] = (96, 72)) -> list[str]:
    return [data_url(png_bytes(size, (20 * i % 255, 80, 160))) for i in range(n)]


def _post(c: httpx.Client, model: str, **body: Any) -> httpx.Response:
    spec = CATALOG.get(model)
    quality = min(spec.quality, key=QUALITY_LONG_SIDE.__getitem__)
    # One step is enough to exercise every path, except SDXL img2img, which runs int(steps x strength) of them.
    steps = 2 if spec.family == "sdxl" else 1
    return c.post("/api/v1/images/generate", json={"model": model, "prompt": "compose these", "quality": quality,
                                                   "num_inference_steps": steps, **body})


@pytest.mark.parametrize("model", ALL)
@pytest.mark.parametrize("shape", ["text-only", "one-source", "four-references", "maximum"])
def test_input_shapes(server: ServerProcess, model: str, shape: str) -> None:
    spec = CATALOG.get(model)
    if shape == "four-references" and spec.max_reference_images == 4 and spec.max_source_images > 1:
        pytest.skip("the maximum shape already sends these 4 references (with more sources)")
    body: dict[str, Any] = {
        "text-only": {},
        "one-source": {"image_urls": _images(1)},
        "four-references": {"image_urls": _images(1), "reference_images": _images(4)[:spec.max_reference_images]},
        "maximum": {"image_urls": _images(spec.max_source_images),
                    "reference_images": _images(spec.max_reference_images)},
    }[shape]
    with server.client() as c:
        # Guidance 1 turns true CFG off (Qwen would encode all the images twice): the shapes are the point here.
        r = _post(c, model, guidance_scale=1.0, **body)
        assert r.status_code == 200, r.text
        view = r.json()
        assert view["darkroom"]["task"] == ("generate" if shape == "text-only" else "edit")
        assert view["darkroom"]["runtime"]["family"] == spec.family
        assert len(view["images"]) == 1


@pytest.mark.parametrize("model", ALL)
def test_over_the_limit_names_it(server: ServerProcess, model: str) -> None:
    spec = CATALOG.get(model)
    with server.client() as c:
        r = _post(c, model, image_urls=_images(spec.max_source_images + 1))
        err = r.json()["error"]
        assert (r.status_code, err["code"], err["field"]) == (422, "too_many_images", "image_urls")
        assert f"at most {spec.max_source_images}" in err["message"]
        r = _post(c, model, reference_images=_images(spec.max_reference_images + 1))
        assert r.json()["error"]["code"] == "too_many_images" and str(spec.max_reference_images) in r.text
        r = _post(c, model, num_images=spec.max_num_images + 1)
        assert r.status_code == 422 and r.json()["error"]["field"] == "num_images"


@pytest.mark.parametrize("model", ["vertex/nano-banana-flash", "nano-banana-2"])
def test_num_images_at_the_maximum(server: ServerProcess, model: str) -> None:
    spec = CATALOG.get(model)
    with server.client() as c:
        r = _post(c, model, num_images=spec.max_num_images, seed=40, image_urls=_images(1))
        assert r.status_code == 200, r.text
        images = r.json()["images"]
        assert [im["seed"] for im in images] == list(range(40, 40 + spec.max_num_images))
        contents = {c.get(im["url"]).content for im in images}
        assert len(contents) == spec.max_num_images  # every candidate is its own image


def test_strength_is_refused_where_it_means_nothing(server: ServerProcess) -> None:
    with server.client() as c:
        r = _post(c, "nano-banana", strength=0.5, image_urls=_images(1))
        assert r.status_code == 422 and r.json()["error"]["field"] == "strength"


def test_search_grounding_is_refused(server: ServerProcess) -> None:
    with server.client() as c:
        for name in ("search_grounding", "enable_web_search"):
            r = _post(c, "vertex/nano-banana-flash", **{name: True})
            err = r.json()["error"]
            assert (r.status_code, err["code"], err["field"]) == (422, "unsupported_feature", name)
        assert _post(c, "vertex/nano-banana-flash", search_grounding=False).status_code == 200


def test_negative_prompt_only_where_the_family_has_it(server: ServerProcess) -> None:
    with server.client() as c:
        r = _post(c, "nano-banana-2", negative_prompt="blurry")
        assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_feature"
        assert _post(c, "nano-banana", negative_prompt="blurry").status_code == 200  # Qwen: true CFG
        assert _post(c, "seedream-4.0", negative_prompt="blurry").status_code == 200
        assert _post(c, "flux-kontext-pro", negative_prompt="blurry").status_code == 200
        models = {m["id"]: m for m in c.get("/api/v1/images/models").json()["models"]}
    assert "negative_prompt" not in models["nano-banana-2"]["editControls"]
    assert "strength" not in models["nano-banana"]["editControls"]
    assert {"negative_prompt", "strength", "mask_url"} <= set(models["seedream-4.0"]["editControls"])


def test_models_list_agrees_with_the_config(server: ServerProcess) -> None:
    with server.client() as c:
        listed = {m["id"]: m for m in c.get("/api/v1/images/models").json()["models"]}
    assert sorted(listed) == CATALOG.ids()
    for mid, m in listed.items():
        spec = CATALOG.get(mid)
        assert m["quality"] == spec.quality and m["imageSize"] == spec.aspect_ratios
        assert m["maxNumImages"] == spec.max_num_images and m["maxReferenceImages"] == spec.max_reference_images
        assert m["maxSourceImages"] == spec.max_source_images and m["local"]["family"] == spec.family


def test_a_model_without_masks_says_so(server: ServerProcess) -> None:
    with server.client() as c:
        r = _post(c, "vertex/nano-banana-pro", image_urls=_images(1), mask_url=_images(1)[0])
    err = r.json()["error"]
    assert (r.status_code, err["code"], err["field"]) == (422, "unsupported_feature", "mask_url")


def test_seedream_references_alone_are_an_image_prompt(server: ServerProcess) -> None:
    with server.client() as c:
        r = _post(c, "seedream-4.0", reference_images=_images(3), num_images=2, num_inference_steps=2)
        assert r.status_code == 200, r.text
        assert r.json()["darkroom"]["task"] == "edit" and len(r.json()["images"]) == 2
        models = {m["id"]: m for m in c.get("/api/v1/images/models").json()["models"]}
    seedream = models["seedream-4.0"]
    assert seedream["maxReferenceImages"] == 9
    assert seedream["local"]["addons"][0]["repo"] == "h94/IP-Adapter"
