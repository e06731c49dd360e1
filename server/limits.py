"""The checks of an ask against its model's advertised limits: counts, tiers, ratios, sizes, durations.

Each refusal is a 4xx that names the field and says what the model takes. Pure functions of the catalog's
specs and the family's static facts: no I/O, no torch.
"""

from __future__ import annotations

from pipelines.base import Family, ParamError, RenderParams
from pipelines.video_base import VideoFamily
from server.asks import ImageAsk, VideoAsk
from server.catalog import QUALITY_LONG_SIDE, RESOLUTION_SHORT_SIDE, ModelSpec, VideoModelSpec, parse_ratio
from server.errors import ApiError, ErrorCode

MIN_SIDE = 64
"""Smallest output side in pixels: below it an image is a thumbnail of a render, not a render."""


def check_image_limits(spec: ModelSpec, ask: ImageAsk) -> None:
    """Counts, ratio, tier, number of outputs and format against the id's limits."""
    if len(ask.sources) > spec.max_source_images:
        raise ApiError(422, ErrorCode.TOO_MANY_IMAGES, f"{spec.id} takes at most {spec.max_source_images} source "
                       f"image(s) in image_urls; got {len(ask.sources)}", "image_urls")
    if len(ask.references) > spec.max_reference_images:
        raise ApiError(422, ErrorCode.TOO_MANY_IMAGES, f"{spec.id} takes at most {spec.max_reference_images} "
                       f"reference image(s); got {len(ask.references)}", "reference_images")
    if ask.size is None and ask.aspect_ratio not in spec.aspect_ratios:
        raise ApiError(422, ErrorCode.UNSUPPORTED_ASPECT_RATIO, f"{spec.id} supports aspect_ratio "
                       f"{', '.join(spec.aspect_ratios)}; got {ask.aspect_ratio[:20]!r}", "aspect_ratio")
    if ask.quality is not None and ask.quality not in spec.quality:
        raise ApiError(422, ErrorCode.UNSUPPORTED_QUALITY, f"{spec.id} supports quality {', '.join(spec.quality)}; "
                       f"got {ask.quality[:20]!r}", "quality")
    if ask.num_images is not None and not 1 <= ask.num_images <= spec.max_num_images:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, f"{spec.id} makes 1 to {spec.max_num_images} images per "
                       f"request; got {ask.num_images}", ask.num_images_field)
    if ask.output_format not in spec.output_formats:
        raise ApiError(422, ErrorCode.INVALID_REQUEST,
                       f"output_format must be one of {', '.join(spec.output_formats)}", "output_format")


def check_image_size(spec: ModelSpec, ask: ImageAsk) -> None:
    """Refuse only sizes the model can never make: any other size is rendered on the model's grid and cropped
    or resized to exactly what was asked (server/media/fit.py)."""
    assert ask.size is not None
    w, h = ask.size
    largest = max(QUALITY_LONG_SIDE[q] for q in spec.quality)
    ratios = [parse_ratio(r) for r in spec.aspect_ratios if r != "auto"]
    widest = max([4.0, *(max(r) / min(r) for r in ratios)])
    if min(w, h) < MIN_SIDE or max(w, h) > largest or max(w, h) > widest * min(w, h):
        raise ApiError(422, ErrorCode.INVALID_REQUEST, (
            f"{spec.id} makes sizes from {MIN_SIDE} px up to {largest} px a side, at most {widest:g}:1; "
            f"got {w}x{h}"), ask.size_field)


UPSCALE_MAX = 1.5
"""An exact clip size up to this much past the largest tier's short side is rendered at that tier and upscaled
(OpenAI's 1024x1792 and 1792x1024 Sora sizes on 720p stand-ins); beyond it, refused."""


def tier_for_video_size(spec: VideoModelSpec, ask: VideoAsk) -> str:
    """The smallest listed tier whose short side covers an exact clip size (the largest, upscaled from, for a size
    up to UPSCALE_MAX past it); 422 for sizes never made."""
    assert ask.size is not None
    w, h = ask.size
    tiers = sorted(spec.resolutions, key=RESOLUTION_SHORT_SIDE.__getitem__)
    largest = RESOLUTION_SHORT_SIDE[tiers[-1]]
    fits = [t for t in tiers if RESOLUTION_SHORT_SIDE[t] >= min(w, h)] or \
        ([tiers[-1]] if min(w, h) <= UPSCALE_MAX * largest else [])
    if w % 2 or h % 2 or min(w, h) < MIN_SIDE or not fits or max(w, h) > 4 * min(w, h):
        raise ApiError(422, ErrorCode.UNSUPPORTED_RESOLUTION, (
            f"{spec.id} makes clips with even sides, the short side from {MIN_SIDE} to "
            f"{int(UPSCALE_MAX * largest)} px (above {largest} px rendered at {largest} px and upscaled), at most 4:1 "
            f"(H.264 needs even sides); got {w}x{h}"), ask.size_field)
    return fits[0]


def check_video_limits(spec: VideoModelSpec, fam: type[VideoFamily], ask: VideoAsk, duration: int,
                       resolution: str, fps: int, with_audio: list[str]) -> None:
    """Frames, duration, tier, ratio, fps and audio against the id's limits (`with_audio`: ids that make it)."""
    if not ask.frames:
        raise ApiError(422, ErrorCode.MISSING_FIELD, "image-to-video needs a first frame in image_urls", "image_urls")
    most = 2 if fam.supports_last_frame else 1
    if len(ask.frames) > most:
        what = "a first and a last frame" if most == 2 else "one first frame (no last frame)"
        raise ApiError(422, ErrorCode.TOO_MANY_IMAGES, f"{spec.id} takes {what} in image_urls; got "
                       f"{len(ask.frames)} images", "image_urls")
    if duration not in spec.durations:
        raise ApiError(422, ErrorCode.UNSUPPORTED_DURATION, f"{spec.id} makes clips of "
                       f"{', '.join(f'{x}s' for x in spec.durations)}; got {duration}s", "duration")
    if resolution not in spec.resolutions:
        raise ApiError(422, ErrorCode.UNSUPPORTED_RESOLUTION, f"{spec.id} supports resolution "
                       f"{', '.join(spec.resolutions)}; got {resolution[:20]!r}", "resolution")
    if ask.aspect_ratio not in spec.aspect_ratios:
        raise ApiError(422, ErrorCode.UNSUPPORTED_ASPECT_RATIO, f"{spec.id} supports aspect_ratio "
                       f"{', '.join(spec.aspect_ratios)}; got {ask.aspect_ratio[:20]!r}", "aspect_ratio")
    if fps not in spec.fps:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, f"{spec.id} renders at {', '.join(map(str, spec.fps))} fps",
                       "fps")
    if ask.generate_audio and not fam.supports_audio:
        hint = f"; models with audio: {', '.join(with_audio)}" if with_audio else ""
        raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, f"{spec.id} makes silent video; send "
                       f"generate_audio=false{hint}", "generate_audio")


def family_check(fam: type[Family], params: RenderParams) -> None:
    """The family's own refusals (sizes off its grid, features it lacks) as 422s naming the field."""
    try:
        fam.check(params)
    except ParamError as exc:
        code = ErrorCode.UNSUPPORTED_FEATURE if exc.unsupported else ErrorCode.INVALID_REQUEST
        raise ApiError(422, code, exc.message, exc.field) from None
