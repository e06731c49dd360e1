"""Every quality x aspect_ratio a model lists produces exactly the advertised size: the tier's long side and the
ratio's exact short side, rendered on the model's grid (recorded as `rendered`) and cropped to it."""

from __future__ import annotations

import pytest

from pipelines.registry import family_class
from server.catalog import QUALITY_LONG_SIDE, parse_ratio
from server.engine.sizing import exact_image_size, output_size
from tests.packaged import packaged_config
from tests.support import ServerProcess, decode_png_size

CATALOG = packaged_config().catalog


REFINED_SAMPLE = {"nano-banana-2", "seedream-4.0"}


def _extremes(ratios: list[str]) -> list[str]:
    shape = {ar: parse_ratio(ar)[0] / parse_ratio(ar)[1] for ar in ratios}
    return sorted({min(shape, key=shape.get), max(shape, key=shape.get), min(shape, key=lambda a: abs(shape[a] - 1))})


@pytest.mark.parametrize("model", CATALOG.ids())
def test_every_quality_and_aspect_ratio(server: ServerProcess, model: str) -> None:
    spec = CATALOG.get(model)
    multiple = family_class(spec.family).size_multiple
    ratios = [ar for ar in spec.aspect_ratios if ar != "auto"]
    lowest = min(spec.quality, key=QUALITY_LONG_SIDE.__getitem__)
    with server.client() as c:
        for quality in spec.quality:
            # Every ratio at the default tier for every id (every native tier for flux-kontext-pro), and the
            # squarest and most extreme ratios at the lowest tier (the arithmetic of every id x tier x ratio is
            # checked in tests/unit/test_catalog.py). Refined tiers (above the native
            # size) take one tiled pass per request, so only the widest ratio (fewest tiles) is rendered.
            fam = family_class(spec.family)
            if QUALITY_LONG_SIDE[quality] > fam.native_max_long_side:
                # One model per family renders its smallest refined tier (the path is the family's, not the id's;
                # larger tiers differ only in tile count: tests/unit/test_tiling.py, sizes: test_catalog.py).
                refined = [q for q in spec.quality if QUALITY_LONG_SIDE[q] > fam.native_max_long_side]
                if model not in REFINED_SAMPLE or quality != min(refined, key=QUALITY_LONG_SIDE.__getitem__):
                    continue
                chosen = [max(ratios, key=lambda a: parse_ratio(a)[0] / parse_ratio(a)[1])]
            elif quality == spec.default_quality or model == "flux-kontext-pro":
                # What a user gets by default: the default tier in every ratio (every native tier for Kontext).
                chosen = ratios
            elif quality == lowest:
                chosen = _extremes(ratios)
            else:
                continue
            for ar in chosen:
                body = {"model": model, "prompt": "size check", "quality": quality, "aspect_ratio": ar,
                        "num_inference_steps": 1}
                r = c.post("/api/v1/images/generate", json=body)
                assert r.status_code == 200, (quality, ar, r.text)
                img = r.json()["images"][0]
                want = exact_image_size(QUALITY_LONG_SIDE[quality], parse_ratio(ar))
                rendered = output_size(QUALITY_LONG_SIDE[quality], parse_ratio(ar), multiple)
                assert (img["width"], img["height"]) == want
                assert max(want) == QUALITY_LONG_SIDE[quality]
                assert r.json()["darkroom"]["rendered"] == {"width": rendered[0], "height": rendered[1]}
                assert rendered[0] % multiple == 0 and rendered[1] % multiple == 0
                assert decode_png_size(c.get(img["url"]).content) == want
