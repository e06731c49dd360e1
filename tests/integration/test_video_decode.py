"""Every video id renders at its default resolution in every aspect ratio it advertises, through the decode path
(tiled, with the same tiles) that the default request takes, and through the untiled path of short clips.

A default clip (4-8 s, 97-193 frames) takes minutes on a CPU even on demo weights, so each render here is the
shortest clip of the family at the default size with the default request's decode plan forced onto it: the same
VAE calls on the same tile grid, fewer frames. The tiny pipelines are the real diffusers classes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pipelines.base import RenderParams, RenderSpec, Task
from pipelines.registry import family_class
from pipelines.video_base import DecodePlan, VideoFamily
from server.catalog import RESOLUTION_SHORT_SIDE, parse_ratio
from server.engine.sizing import video_size
from tests.packaged import packaged_config

CATALOG = packaged_config().catalog
SOURCE = (128, 96)  # a small 4:3 first frame, as in the report: `auto` follows its shape


def _cases() -> list[tuple[str, str]]:
    """(video id, aspect ratio) per family and default resolution: ids sharing both (veo-3, veo-3-fast) render
    the same clips, so the first id stands for them."""
    seen: set[tuple[str, str, str]] = set()
    cases = []
    for spec in CATALOG.video_specs():
        for ratio in spec.aspect_ratios:
            key = (spec.family, spec.defaults.resolution, ratio)
            if key not in seen:
                seen.add(key)
                cases.append((spec.id, ratio))
    return cases


_loaded: dict[str, VideoFamily] = {}


def _family(demo_dir: Path, model: str) -> VideoFamily:
    spec = CATALOG.get_video(model)
    if spec.weights not in _loaded:
        fam = family_class(spec.family)(demo_dir / spec.weights, "cpu", torch.float32)
        fam.load()
        _loaded.clear()  # one family in memory at a time
        _loaded[spec.weights] = fam
    return _loaded[spec.weights]  # type: ignore[return-value]


def _render(fam: VideoFamily, width: int, height: int, plan: DecodePlan, monkeypatch: pytest.MonkeyPatch) -> None:
    params = RenderParams(Task.IMAGE_TO_VIDEO, "a slow pan", width, height, 1, (7,), 1, 1.0, 1.0, num_sources=1,
                          num_frames=fam.frame_step + 1, fps=24.0)
    monkeypatch.setattr(type(fam), "decode_plan", classmethod(lambda _cls, _p: plan))
    out = fam.run(RenderSpec(params, sources=(Image.new("RGB", SOURCE, (30, 90, 160)),)), lambda _k, _n: None)
    assert out.videos[0].frames.shape == (params.num_frames, height, width, 3)


@pytest.mark.parametrize(("model", "ratio"), _cases())
def test_default_resolution_tiled_decode(demo_dir: Path, model: str, ratio: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    spec = CATALOG.get_video(model)
    fam = _family(demo_dir, model)
    shape = SOURCE if ratio == "auto" else parse_ratio(ratio)
    width, height = video_size(RESOLUTION_SHORT_SIDE[spec.defaults.resolution], shape, fam.size_multiple)
    default = RenderParams(Task.IMAGE_TO_VIDEO, "x", width, height, 1, (0,), 1, 1.0, 1.0, num_sources=1,
                           num_frames=fam.valid_frames(spec.defaults.duration * spec.defaults.fps))
    plan = type(fam).decode_plan(default)
    assert plan.tiled, "the default clip decodes in tiles; this test must take that path"
    _render(fam, width, height, plan, monkeypatch)


@pytest.mark.parametrize("model", sorted({m for m, _ in _cases()}))
def test_short_clip_untiled_decode(demo_dir: Path, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = CATALOG.get_video(model)
    fam = _family(demo_dir, model)
    width, height = video_size(RESOLUTION_SHORT_SIDE["240p"], SOURCE, fam.size_multiple)
    short = RenderParams(Task.IMAGE_TO_VIDEO, "x", width, height, 1, (0,), 1, 1.0, 1.0, num_sources=1,
                         num_frames=fam.valid_frames(min(spec.durations) * spec.defaults.fps))
    plan = type(fam).decode_plan(short)
    assert not plan.tiled
    _render(fam, width, height, plan, monkeypatch)


def test_family_tiling_constants_match_the_vae(demo_dir: Path) -> None:
    """The plan's arithmetic (vae_spatial, tile, overlap) is the VAE's own: diffusers' defaults for its class."""
    for spec in CATALOG.video_specs():
        fam = _family(demo_dir, spec.id)
        vae = fam.pipeline("i2v").vae
        vae.disable_tiling()
        fresh = type(vae).from_config(vae.config)
        assert fresh.spatial_compression_ratio == fam.vae_spatial
        assert fresh.tile_sample_min_height == fam.vae_tile_px
        assert fresh.tile_sample_min_height - fresh.tile_sample_stride_height == fam.vae_overlap_px
