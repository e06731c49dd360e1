"""Make Qwen2-VL processors work without torchvision (transformers 5 gotcha).

transformers 5.x type-checks a processor's `video_processor` against a class
that only exists when torchvision is installed, so `Qwen2VLProcessor(...)` and
`Qwen2VLProcessor.from_pretrained(...)` fail on CPU-only installs, even though
Qwen-Image-Edit only ever feeds the processor still images. There is no CPU
torchvision wheel to install instead (tiny-models.md, gotcha 1).

`apply()` narrows `ProcessorMixin.get_attributes` to drop `video_processor`
when torchvision is missing; with torchvision present it changes nothing. It
patches a transformers internal, so tests/unit/test_qwen_shim.py pins the
behaviour: if an upgrade breaks or obsoletes it, that test says so.
"""

from __future__ import annotations

import importlib.util
from typing import Any

_APPLIED = False


def torchvision_available() -> bool:
    """Whether torchvision can be imported (its absence is what the shim works around)."""
    return importlib.util.find_spec("torchvision") is not None


def apply() -> bool:
    """Install the workaround if needed (idempotent). Returns True when the shim is active."""
    global _APPLIED
    if _APPLIED:
        return True
    if torchvision_available():
        return False
    from transformers.processing_utils import ProcessorMixin

    original = ProcessorMixin.get_attributes.__func__  # type: ignore[attr-defined]

    def get_attributes(cls: Any) -> list[str]:
        return [a for a in original(cls) if a != "video_processor"]

    ProcessorMixin.get_attributes = classmethod(get_attributes)  # type: ignore[method-assign]
    _APPLIED = True
    return True
