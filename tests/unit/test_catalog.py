"""configs/models.toml validation and the id -> family/manifest/builder parity."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.registry import FAMILIES
from server.catalog import Catalog, ModelSpec
from server.errors import ApiError
from tests.packaged import packaged_config
from weights.demo import tiny_builder
from weights.manifest import load_manifest

MANIFEST = packaged_config().manifest
GOOD = {
    "family": "sdxl", "weights": "sdxl-base-1.0", "name": "x", "description": "x", "capabilities": [],
    "quality": ["512", "1K"], "default_quality": "1K", "aspect_ratios": ["auto", "1:1"],
    "max_source_images": 1, "max_reference_images": 0, "max_num_images": 4, "default_num_images": 1,
    "defaults": {"num_inference_steps": 30, "guidance_scale": 5.0, "strength": 0.6},
}


def test_every_id_resolves_to_family_manifest_and_builder() -> None:
    catalog = packaged_config().catalog
    assert catalog.ids() == ["flux-kontext-max", "flux-kontext-pro", "nano-banana", "nano-banana-2", "seedream-4.0",
                             "vertex/nano-banana-flash", "vertex/nano-banana-pro"]
    assert catalog.video_ids() == ["sora-2", "sora-2-pro", "veo-3", "veo-3-fast"]
    for spec in [*catalog.specs(), *catalog.video_specs()]:
        assert spec.family in FAMILIES
        entry = catalog.weights_for(spec)
        assert entry.family == spec.family
        assert callable(tiny_builder(entry.family))
        assert entry.license and entry.license_url.startswith("https://")


def test_lookup_is_exact() -> None:
    catalog = packaged_config().catalog
    for near in ("FLUX-KONTEXT-PRO", "flux-kontext", "kontext-pro", " flux-kontext-pro"):
        with pytest.raises(ApiError) as exc:
            catalog.get(near)
        assert exc.value.code == "unknown_model"


@pytest.mark.parametrize(("change", "message"), [
    ({"quality": ["8K"]}, "unknown quality"),
    ({"default_quality": "512", "quality": ["1K"]}, "default_quality"),
    ({"default_num_images": 5}, "default_num_images"),
    ({"aspect_ratios": ["wide"]}, "W:H"),
    ({"output_formats": ["gif"]}, "output_formats"),
    ({"colour": "red"}, "Extra inputs"),
    ({"defaults": {"num_inference_steps": 0, "guidance_scale": 1.0, "strength": 0.5}}, "greater than or equal"),
])
def test_bad_model_config_is_rejected(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec(id="m", **{**GOOD, **change})


def test_tiers_beyond_native_need_a_refine_pass() -> None:
    kontext = ModelSpec(id="k", **{**GOOD, "family": "flux-kontext", "weights": "flux1-kontext-dev",
                                   "quality": ["1K", "4K"]})
    with pytest.raises(ValueError, match="no refine pass"):
        Catalog({"k": kontext}, MANIFEST)
    sdxl = ModelSpec(id="s", **{**GOOD, "quality": ["1K", "4K"]})
    assert Catalog({"s": sdxl}, MANIFEST).get("s").quality == ["1K", "4K"]


def test_commercial_override_is_checked_like_a_spec() -> None:
    dev = {**GOOD, "family": "flux2-dev", "weights": "flux2-dev"}
    swap = {"family": "flux2-klein", "weights": "flux2-klein-4b", "description": "klein"}
    with pytest.raises(ValueError, match="not both"):
        ModelSpec(id="m", **dev, commercial=swap, commercial_alternative="x")
    with pytest.raises(ValueError, match="are for family"):
        Catalog({"m": ModelSpec(id="m", **dev, commercial={**swap, "family": "sdxl"})}, MANIFEST)
    no_licence = ModelSpec(id="m", **dev, commercial={**swap, "family": "flux-kontext", "weights": "flux1-kontext-dev"})
    Catalog({"m": no_licence}, MANIFEST)  # fine until the commercial policy asks for it
    with pytest.raises(ValueError, match="not licensed for commercial use"):
        Catalog({"m": no_licence}, MANIFEST, license_policy="commercial")
    served = Catalog({"m": ModelSpec(id="m", **dev, commercial=swap)}, MANIFEST, license_policy="commercial").get("m")
    assert (served.family, served.weights, served.description, served.defaults) == (
        "flux2-klein", "flux2-klein-4b", "klein", ModelSpec(id="m", **GOOD).defaults)


def test_cross_checks(tmp_path: Path) -> None:
    spec = ModelSpec(id="m", **GOOD)
    with pytest.raises(ValueError, match="family 'nope'"):
        Catalog({"m": spec.model_copy(update={"family": "nope"})}, MANIFEST)
    with pytest.raises(ValueError, match="not in the config dir.s manifest.toml"):
        Catalog({"m": spec.model_copy(update={"weights": "nope"})}, MANIFEST)
    with pytest.raises(ValueError, match="are for family"):
        Catalog({"m": spec.model_copy(update={"family": "flux-kontext"})}, MANIFEST)


def test_manifest_refuses_pickle_patterns(tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text('[weights.x]\nfamily="sdxl"\nrepo="a/b"\nrevision="main"\nlicense="l"\nlicense_url="u"\n'
                   'commercial_use=true\nallow_patterns=["unet/*.bin"]\n')
    with pytest.raises(ValueError, match="pickled"):
        load_manifest(bad)


def test_every_id_tier_and_ratio_maps_to_a_valid_size() -> None:
    from server.catalog import QUALITY_LONG_SIDE, parse_ratio
    from server.engine.sizing import exact_image_size, output_size

    catalog = packaged_config().catalog
    checked = 0
    for spec in catalog.specs():
        multiple = FAMILIES[spec.family].size_multiple
        for quality in spec.quality:
            for ar in (a for a in spec.aspect_ratios if a != "auto"):
                rw, rh = parse_ratio(ar)
                w, h = output_size(QUALITY_LONG_SIDE[quality], (rw, rh), multiple)
                assert max(w, h) == QUALITY_LONG_SIDE[quality]
                assert w % multiple == 0 and h % multiple == 0
                assert (w >= h) == (rw >= rh)
                # The short side is the grid multiple nearest the exact ratio.
                exact = QUALITY_LONG_SIDE[quality] * min(rw, rh) / max(rw, rh)
                assert abs(min(w, h) - exact) <= multiple / 2 or min(w, h) == multiple
                # What the client gets is the exact ratio; the render covers it within the grid's rounding.
                ew, eh = exact_image_size(QUALITY_LONG_SIDE[quality], (rw, rh))
                assert max(ew, eh) == QUALITY_LONG_SIDE[quality] and abs(min(ew, eh) - exact) <= 0.5
                checked += 1
    assert checked > 200


def test_every_refined_tier_tiles_on_the_model_grid() -> None:
    """Above a family's native size, every tier x ratio renders natively, then refines tile by tile: each tile is
    a size the family's img2img can run (on its grid, at least one grid step) and the tiles cover the render."""
    from pipelines.tiling import tile_boxes
    from server.catalog import QUALITY_LONG_SIDE, parse_ratio
    from server.engine.sizing import output_size

    catalog = packaged_config().catalog
    refined = 0
    for spec in catalog.specs():
        fam = FAMILIES[spec.family]
        for quality in spec.quality:
            if QUALITY_LONG_SIDE[quality] <= fam.native_max_long_side:
                continue
            for ar in (a for a in spec.aspect_ratios if a != "auto"):
                w, h = output_size(QUALITY_LONG_SIDE[quality], parse_ratio(ar), fam.size_multiple)
                boxes = tile_boxes(w, h, fam.refine_tile, fam.refine_overlap)
                for left, top, right, bottom in boxes:
                    tw, th = right - left, bottom - top
                    assert tw % fam.size_multiple == 0 and th % fam.size_multiple == 0, (spec.id, quality, ar)
                    assert min(tw, th) >= fam.size_multiple and max(tw, th) <= fam.refine_tile
                assert max(b[2] for b in boxes) == w and max(b[3] for b in boxes) == h
                refined += 1
    assert refined > 50
