"""Frame-count rules, video sizing, MP4 muxing and the licence policy, without a server."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from pipelines.ltx2 import LTX2Family
from pipelines.wan import WanI2VA14BFamily, WanTI2V5BFamily
from server.catalog import Catalog
from server.engine.sizing import video_size
from server.media.video import _fit_audio, encode_mp4
from tests.packaged import packaged_config


@pytest.mark.parametrize(("fam", "wanted", "want"), [
    (WanTI2V5BFamily, 96, 97), (WanTI2V5BFamily, 192, 193), (WanI2VA14BFamily, 64, 65), (LTX2Family, 96, 97),
    (LTX2Family, 144, 145), (LTX2Family, 150, 153), (LTX2Family, 2, 9), (WanTI2V5BFamily, 2, 5),
])
def test_valid_frames(fam: type, wanted: int, want: int) -> None:
    assert fam.valid_frames(wanted) == want


@pytest.mark.parametrize(("short", "ratio", "mult", "want"), [
    (720, (16, 9), 32, (1248, 704)), (480, (16, 9), 16, (848, 480)), (720, (9, 16), 16, (720, 1280)),
    (240, (1, 1), 32, (224, 224)), (1080, (16, 9), 32, (1888, 1056)),
])
def test_video_size(short: int, ratio: tuple[int, int], mult: int, want: tuple[int, int]) -> None:
    assert video_size(short, ratio, mult) == want


def test_audio_fits_video_length() -> None:
    mono = np.linspace(-2, 2, 100, dtype=np.float32)
    fitted = _fit_audio(mono, 1000, 0.25)
    assert fitted.shape == (2, 250) and fitted.max() <= 1.0 and not fitted[:, 100:].any()
    assert _fit_audio(np.ones((2, 5000), np.float32), 1000, 2.0).shape == (2, 2000)


def test_mp4_has_exact_frames_and_optional_audio() -> None:
    frames = np.random.default_rng(0).integers(0, 255, (17, 64, 96, 3), dtype=np.uint8)
    silent = encode_mp4(frames, 16.0)
    loud = encode_mp4(frames, 16.0, np.zeros((2, 10), np.float32), 16000)
    assert silent == encode_mp4(frames, 16.0)  # deterministic
    for data, streams in ((silent, 1), (loud, 2)):
        with av.open(io.BytesIO(data)) as c:
            assert len(c.streams) == streams
            assert sum(1 for _ in c.decode(video=0)) == 17
            assert c.duration / 1e6 == pytest.approx(17 / 16, abs=0.02)


def test_commercial_policy_swaps_every_non_commercial_stand_in() -> None:
    manifest = packaged_config().manifest
    free = packaged_config().catalog
    strict = Catalog.load(manifest, packaged_config().directory / "models.toml", license_policy="commercial")
    assert free.ids() == strict.ids() and free.video_ids() == strict.video_ids()
    for spec in strict.specs() + strict.video_specs():
        assert manifest[spec.weights].commercial_use, spec.id
    assert free.get("flux-kontext-pro").family == "flux-kontext"
    assert strict.get("flux-kontext-pro").family == "sdxl"
    assert strict.get_video("veo-3").family == "wan2.2-ti2v-5b"
    assert strict.get_video("veo-3").name == "Veo 3"
    assert "ltx-2" not in strict.weights_needed() and "flux1-kontext-dev" not in strict.weights_needed()
    # An inline override swaps the stand-in but keeps the id's own limits.
    pro, pro_strict = free.get("vertex/nano-banana-pro"), strict.get("vertex/nano-banana-pro")
    assert (pro.family, pro_strict.family) == ("flux2-dev", "flux2-klein")
    assert pro_strict.defaults.num_inference_steps == 8 and "FLUX.2 [klein]" in pro_strict.description
    assert (pro_strict.max_source_images, pro_strict.max_num_images, pro_strict.quality) == (14, 10, pro.quality)
    assert "flux2-dev" not in strict.weights_needed()


# ---- decode tiling and exact sizes ---------------------------------------------------------------------------

VIDEO_FAMILIES = (LTX2Family, WanTI2V5BFamily, WanI2VA14BFamily)
# What `auto` can turn into: the source's own shape (every ratio a client's first frame may have, 1:4 to 4:1).
SOURCE_SHAPES = [(4, 3), (3, 4), (3, 2), (2, 3), (21, 9), (9, 21), (5, 4), (4, 5), (4, 1), (1, 4), (1, 1)]


@pytest.mark.parametrize("fam", VIDEO_FAMILIES, ids=lambda f: f.name)
def test_a_tile_stride_exists_for_every_length(fam: type) -> None:
    from pipelines.video_base import _SMALLEST_TILE_LATENTS, tile_stride

    tile, overlap = fam.vae_tile_px // fam.vae_spatial, fam.vae_overlap_px // fam.vae_spatial
    for latents in range(1, 2000):
        stride = tile_stride(latents, tile, overlap)
        assert tile // 2 <= stride + overlap <= tile
        assert latents <= stride or latents % stride == 0 or latents % stride >= _SMALLEST_TILE_LATENTS


def _video_requests() -> list[tuple[str, str, tuple[int, int], int]]:
    catalog = packaged_config().catalog
    out = []
    for spec in catalog.video_specs():
        ratios = [tuple(map(int, r.split(":"))) for r in spec.aspect_ratios if r != "auto"] + SOURCE_SHAPES
        out += [(spec.id, res, ratio, d) for res in spec.resolutions for ratio in ratios for d in spec.durations]
    return out


def test_every_advertised_clip_decodes_without_a_sliver_tile() -> None:
    """Every video id x resolution x ratio (and source shape for auto) x duration: the decode plan's last tile
    along each side is at least two latents (the 4:3 720p clip once left one, and LTX-2's decoder failed)."""
    from dataclasses import replace

    from pipelines.base import RenderParams, Task
    from pipelines.registry import family_class
    from pipelines.video_base import _SMALLEST_TILE_LATENTS
    from server.catalog import RESOLUTION_SHORT_SIDE

    catalog = packaged_config().catalog
    tiled = 0
    for model, res, ratio, duration in _video_requests():
        spec = catalog.get_video(model)
        fam = family_class(spec.family)
        width, height = video_size(RESOLUTION_SHORT_SIDE[res], ratio, fam.size_multiple)
        base = RenderParams(Task.IMAGE_TO_VIDEO, "x", width, height, 1, (0,), 1, 1.0, 1.0, num_sources=1)
        plan = fam.decode_plan(replace(base, num_frames=fam.valid_frames(duration * spec.defaults.fps)))
        if not plan.tiled:
            continue
        tiled += 1
        r = fam.vae_spatial
        for side, tile, stride in ((height, plan.tile[0], plan.stride[0]), (width, plan.tile[1], plan.stride[1])):
            assert tile % r == 0 and stride % r == 0 and tile - stride == fam.vae_overlap_px
            latents, step = side // r, stride // r
            assert latents <= step or latents % step == 0 or latents % step >= _SMALLEST_TILE_LATENTS, \
                (model, res, ratio, duration, plan)
    assert tiled > 100  # the default tiers tile: the check is not vacuous


@pytest.mark.parametrize(("short", "ratio", "want"), [
    (720, (16, 9), (1280, 720)), (720, (9, 16), (720, 1280)), (720, (4, 3), (960, 720)), (240, (16, 9), (426, 240)),
    (480, (16, 9), (854, 480)), (240, (1, 1), (240, 240)), (1080, (9, 16), (1080, 1920)),
])
def test_exact_video_size_is_the_tier_with_even_sides(short: int, ratio: tuple[int, int],
                                                      want: tuple[int, int]) -> None:
    from server.engine.sizing import exact_video_size

    assert exact_video_size(short, ratio) == want


def test_frames_are_fitted_to_the_exact_size() -> None:
    from server.media.fit import fit_frames

    frames = np.random.default_rng(0).integers(0, 255, (3, 224, 416, 3), dtype=np.uint8)
    out = fit_frames(frames, (426, 240))
    assert out.shape == (3, 240, 426, 3) and out.dtype == np.uint8
    assert fit_frames(frames, (416, 224)) is frames  # already that size: untouched
