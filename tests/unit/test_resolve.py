"""How an ask resolves before it is a job: task, tier, exact and rendered sizes, seeds, clip timing (pure)."""

from __future__ import annotations

import pytest

from pipelines.base import Task
from pipelines.registry import family_class
from server import resolve
from server.asks import ImageAsk, ImageInput, VideoAsk
from server.errors import ApiError
from tests.packaged import packaged_config

CATALOG = packaged_config().catalog
URL = ImageInput("image_urls[0]", url="https://example.com/a.png")


def _image(model: str, **kw: object) -> tuple[ImageAsk, object, type]:
    spec = CATALOG.get(model)
    return ImageAsk(model=model, prompt="p", **kw), spec, family_class(spec.family)  # type: ignore[arg-type]


def test_seeds_are_consecutive_from_the_asked_one_and_wrap() -> None:
    assert resolve.seeds(7, 3) == (7, 8, 9)
    assert resolve.seeds(resolve.SEED_MAX, 2) == (resolve.SEED_MAX, 0)
    assert resolve.seeds(None, 2, draw=lambda _n: 41) == (41, 42)


def test_the_task_follows_the_inputs() -> None:
    ask, spec, fam = _image("flux-kontext-pro")
    assert resolve.image_task(spec, fam, ask) is Task.GENERATE  # type: ignore[arg-type]
    ask, spec, fam = _image("flux-kontext-pro", sources=(URL,))
    assert resolve.image_task(spec, fam, ask) is Task.EDIT  # type: ignore[arg-type]


def test_controls_a_model_lacks_are_refused_naming_the_field() -> None:
    plain = next(s.id for s in CATALOG.specs() if "strength" not in family_class(s.family).edit_controls()
                 and Task.INPAINT not in family_class(s.family).tasks)
    ask, spec, fam = _image(plain, sources=(URL,), strength=0.5)
    with pytest.raises(ApiError) as err:
        resolve.image_task(spec, fam, ask)  # type: ignore[arg-type]
    assert err.value.status == 422 and err.value.field == "strength"
    ask, spec, fam = _image(plain, sources=(URL,), mask=ImageInput("mask_url", url="https://x/m.png"))
    with pytest.raises(ApiError) as err:
        resolve.image_task(spec, fam, ask)  # type: ignore[arg-type]
    assert err.value.field == "mask_url"


@pytest.mark.parametrize("ratio", [r for r in CATALOG.get("seedream-4.0").aspect_ratios if r != "auto"])
def test_every_advertised_ratio_of_the_default_tier_gets_its_exact_size(ratio: str) -> None:
    ask, spec, fam = _image("seedream-4.0", aspect_ratio=ratio)
    long_side = resolve.image_long_side(spec, fam, ask)  # type: ignore[arg-type]
    size = resolve.image_size(ask, long_side, fam.size_multiple, None)  # type: ignore[attr-defined]
    rw, rh = (int(x) for x in ratio.split(":"))
    ow, oh = size.output
    assert max(ow, oh) == long_side == 1024  # the default tier, 1K
    assert abs(ow / oh - rw / rh) < 0.01
    assert all(side % fam.size_multiple == 0 for side in size.render)  # type: ignore[attr-defined]


def test_auto_takes_the_first_inputs_shape_and_an_exact_size_wins() -> None:
    ask, _spec, fam = _image("flux-kontext-pro", sources=(URL,))
    assert resolve.image_size(ask, 1024, fam.size_multiple, (1600, 900)).output == (1024, 576)  # type: ignore
    assert resolve.image_size(ask, 1024, 16, None).output == (1024, 1024)  # no input: square
    exact, _spec, _fam = _image("flux-kontext-pro", size=(1000, 700))
    size = resolve.image_size(exact, 0, 16, None)
    assert size.output == (1000, 700) and size.render[0] % 16 == 0 and size.render[1] % 16 == 0


def test_image_params_take_the_models_defaults_for_what_is_unasked() -> None:
    ask, spec, fam = _image("flux-kontext-pro", seed=5, guidance_scale=0.0)
    p = resolve.image_params(spec, fam, ask, "fast")  # type: ignore[arg-type]
    d = spec.defaults  # type: ignore[attr-defined]
    assert p.num_inference_steps == d.num_inference_steps and p.guidance_scale == 0.0  # 0 is an answer, not unset
    assert p.seeds == (5,) and p.preset == "fast" and p.num_images == spec.default_num_images  # type: ignore


def test_a_cpu_drops_an_unasked_clip_to_the_draft_tier_and_says_so() -> None:
    spec = CATALOG.get_video("veo-3-fast")
    ask = VideoAsk(model=spec.id, prompt="p", frames=(URL,))
    tier, warnings = resolve.video_tier(spec, ask, cpu_only=True)
    assert tier == resolve.DRAFT_TIER and "draft tier" in warnings[0]
    assert resolve.video_tier(spec, ask, cpu_only=False) == (spec.defaults.resolution, ())
    asked = VideoAsk(model=spec.id, prompt="p", frames=(URL,), resolution="720p")
    tier, warnings = resolve.video_tier(spec, asked, cpu_only=True)
    assert tier == "720p" and len(warnings) == 1 and "takes minutes" in warnings[0]


def test_clip_sizes_are_even_and_follow_the_first_frame_on_auto() -> None:
    spec = CATALOG.get_video("veo-3-fast")
    fam = family_class(spec.family)
    ask = VideoAsk(model=spec.id, prompt="p", frames=(URL,))
    size = resolve.clip_size(ask, "720p", fam.size_multiple, (900, 1600))
    assert size.output == (720, 1280) and size.render[0] % fam.size_multiple == 0


def test_sizes_past_the_top_tier_render_there_and_upscale_within_limits() -> None:
    """OpenAI's 1792x1024 Sora size on a 720p stand-in: rendered at 720p on its grid, upscaled, and said so; a size
    more than 1.5x past the top tier is refused."""
    spec = CATALOG.get_video("sora-2-pro")
    fam = family_class(spec.family)
    ask = VideoAsk(model=spec.id, prompt="p", frames=(URL,), size=(1792, 1024))
    tier, warnings = resolve.video_tier(spec, ask, cpu_only=False)
    assert tier == "720p" and "upscaled to 1792x1024" in warnings[0]
    size = resolve.clip_size(ask, tier, fam.size_multiple, (64, 64))
    assert size.output == (1792, 1024) and min(size.render) <= 720 and size.render[0] > size.render[1]
    with pytest.raises(ApiError) as exc:
        resolve.video_tier(spec, VideoAsk(model=spec.id, prompt="p", frames=(URL,), size=(1920, 1088)), False)
    assert exc.value.field == "size" and "1080 px" in exc.value.message


def test_clip_timing_and_params() -> None:
    spec = CATALOG.get_video("veo-3-fast")
    fam = family_class(spec.family)
    ask = VideoAsk(model=spec.id, prompt="p", frames=(URL,), duration=2, fps=16, seed=3)
    timing = resolve.clip_timing(spec, fam, ask)  # type: ignore[arg-type]
    assert (timing.duration, timing.fps) == (2, 16)
    assert timing.audio == (spec.defaults.generate_audio and fam.supports_audio)  # type: ignore[attr-defined]
    p = resolve.video_params(spec, fam, ask, resolve.Size((640, 352), (640, 352)), timing, 1, "")  # type: ignore
    assert p.task is Task.IMAGE_TO_VIDEO and p.seeds == (3,) and p.num_frames == fam.valid_frames(32)  # type: ignore
