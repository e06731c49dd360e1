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
from weights.manifest import load_manifest


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
    manifest = load_manifest()
    free = Catalog.load(manifest)
    strict = Catalog.load(manifest, license_policy="commercial")
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
