"""Step-cache presets: how they travel in a render's preset text, what a fixed schedule spends, and the mistakes
configs/acceleration.toml refuses at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.step_cache import StepCache
from server.acceleration_config import Acceleration, ModelAcceleration
from tests.packaged import packaged_config


@pytest.mark.parametrize("cache", [StepCache(), StepCache("fbcache", threshold=0.12),
                                   StepCache("taylorseer", interval=3, warmup_steps=3)])
def test_a_preset_survives_its_text(cache: StepCache) -> None:
    assert StepCache.decode(cache.encode()) == cache


def test_taylorseer_spends_its_warm_up_then_one_pass_per_interval() -> None:
    ts = StepCache("taylorseer", interval=3, warmup_steps=3)
    # Steps 0-2 warm up, step 3 is the first prediction, then every third step is a full pass: 4, 7, ..., 25.
    assert ts.passes(28) == 11
    assert ts.passes(3) == 3 and ts.passes(2) == 2  # a short render (a refine tile) is all warm-up
    assert StepCache("taylorseer", interval=2, warmup_steps=2).passes(10) == 6
    assert StepCache().passes(28) == 28
    assert StepCache("fbcache", threshold=0.1).passes(28) is None  # depends on the content


def test_the_model_settings_say_what_is_missing() -> None:
    with pytest.raises(ValidationError, match="cache_interval >= 2"):
        ModelAcceleration(cache="taylorseer", cache_interval=1)
    with pytest.raises(ValidationError, match="cache_threshold > 0"):
        ModelAcceleration(cache="fbcache")
    with pytest.raises(ValidationError):
        ModelAcceleration(cache="magcache")
    fbc = ModelAcceleration(cache="fbcache", cache_threshold=0.12, demo_cache_threshold=0.35)
    assert fbc.step_cache(demo=True).threshold == 0.35 and fbc.step_cache(demo=False).threshold == 0.12
    ts = ModelAcceleration(cache="taylorseer", cache_interval=4)
    assert ts.step_cache(demo=True) == ts.step_cache(demo=False) == StepCache("taylorseer", interval=4,
                                                                               warmup_steps=3)


def test_the_model_lists_describe_each_kind(tmp_path: Path) -> None:
    catalog = packaged_config().catalog
    path = tmp_path / "acceleration.toml"
    path.write_text('[models."flux-kontext-pro"]\ncache = "taylorseer"\ncache_interval = 3\n'
                    '[models."nano-banana"]\ncache = "fbcache"\ncache_threshold = 0.1\n')
    accel = Acceleration.load(path, catalog)
    assert accel.load_profile("flux1-kontext-dev").step_cache_hooks
    assert accel.describe("flux-kontext-pro")["step_cache"] == {"kind": "taylorseer", "interval": 3,
                                                               "warmup_steps": 3}
    assert accel.describe("nano-banana")["step_cache"] == {"kind": "fbcache", "threshold": 0.1}
    assert accel.describe("flux-kontext-max")["step_cache"] is None
