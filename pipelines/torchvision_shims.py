"""Make the processors of Qwen-Image-Edit and FLUX.2 [dev] work without torchvision.

transformers 5.x ties two processors to torchvision although darkroom only feeds
them still images, and there is no CPU torchvision wheel to install instead
(tiny-models.md, gotcha 1):

- `Qwen2VLProcessor` type-checks a `video_processor` against a class that only
  exists with torchvision, so building or loading it fails.
  `apply_qwen2vl()` narrows `ProcessorMixin.get_attributes` to drop
  `video_processor`.
- `PixtralProcessor` (FLUX.2 [dev]'s "tokenizer") is replaced by a placeholder
  that raises, because its module imports one helper from the torchvision image
  processor. `apply_pixtral()` serves that helper from the PIL image processor
  (the same function, "adapted from" it) and exposes the real class.

Both are no-ops when torchvision is present. They patch transformers internals,
so tests/unit/test_torchvision_shims.py pins the behaviour: if an upgrade
breaks or obsoletes them, that test says so. Each must run before the pipeline
is built or loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_APPLIED: set[str] = set()


def torchvision_available() -> bool:
    """Whether torchvision can be imported (its absence is what the shims work around)."""
    return importlib.util.find_spec("torchvision") is not None


def apply_qwen2vl() -> bool:
    """Let Qwen2-VL processors build and load without torchvision (idempotent). True when active."""
    if "qwen2vl" in _APPLIED:
        return True
    if torchvision_available():
        return False
    from transformers.processing_utils import ProcessorMixin

    original = ProcessorMixin.get_attributes.__func__  # type: ignore[attr-defined]

    def get_attributes(cls: Any) -> list[str]:
        return [a for a in original(cls) if a != "video_processor"]

    ProcessorMixin.get_attributes = classmethod(get_attributes)  # type: ignore[method-assign]
    _APPLIED.add("qwen2vl")
    return True


def apply_pixtral() -> bool:
    """Make `transformers.PixtralProcessor` the real class without torchvision (idempotent). True when active."""
    if "pixtral" in _APPLIED:
        return True
    if torchvision_available():
        return False
    pil = importlib.import_module("transformers.models.pixtral.image_processing_pil_pixtral")
    name = "transformers.models.pixtral.image_processing_pixtral"
    if name not in sys.modules:
        stand_in = types.ModuleType(name)
        stand_in.get_resize_output_image_size = pil.get_resize_output_image_size  # type: ignore[attr-defined]
        stand_in.PixtralImageProcessor = pil.PixtralImageProcessorPil  # type: ignore[attr-defined]
        sys.modules[name] = stand_in
    processing = importlib.import_module("transformers.models.pixtral.processing_pixtral")
    # transformers swaps its top-level lazy module during imports, so patch whatever sys.modules holds now:
    # diffusers resolves "PixtralProcessor" from model_index.json with getattr on that module.
    sys.modules["transformers"].PixtralProcessor = processing.PixtralProcessor
    _APPLIED.add("pixtral")
    return True
