"""Every quality x aspect_ratio a model lists produces exactly the advertised size."""

from __future__ import annotations

import pytest

from server.catalog import QUALITY_LONG_SIDE, Catalog, parse_ratio
from server.engine.sizing import output_size
from pipelines.registry import family_class
from tests.support import ServerProcess, decode_png_size
from weights.manifest import load_manifest

CATALOG = Catalog.load(load_manifest())


@pytest.mark.parametrize("model", CATALOG.ids())
def test_every_quality_and_aspect_ratio(server: ServerProcess, model: str) -> None:
    spec = CATALOG.get(model)
    multiple = family_class(spec.family).size_multiple
    with server.client() as c:
        for quality in spec.quality:
            for ar in spec.aspect_ratios:
                if ar == "auto":
                    continue
                body = {"model": model, "prompt": "size check", "quality": quality, "aspect_ratio": ar,
                        "num_inference_steps": 1}
                r = c.post("/api/v1/images/generate", json=body)
                assert r.status_code == 200, (quality, ar, r.text)
                img = r.json()["images"][0]
                want = output_size(QUALITY_LONG_SIDE[quality], parse_ratio(ar), multiple)
                assert (img["width"], img["height"]) == want
                assert max(want) == QUALITY_LONG_SIDE[quality]
                assert want[0] % multiple == 0 and want[1] % multiple == 0
                assert decode_png_size(c.get(img["url"]).content) == want
