"""On a CUDA machine: full-width random pipelines build on the GPU, load through the served families, and the
calibration script measures and fits their memory (skipped elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import calibrate
from tests.packaged import packaged_config
from weights.full_size import FULL_CONFIGS, build_full_size

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

WEIGHTS = {entry.family: name for name, entry in packaged_config().manifest.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("family", sorted(FULL_CONFIGS))
def test_full_width_build_is_measured_and_fitted(demo_dir: Path, tmp_path: Path, family: str) -> None:
    folder = build_full_size(family, demo_dir / WEIGHTS[family], tmp_path / family, device="cuda:0", depth=2)
    code = calibrate.main(["--families", family, "--weights-path", str(folder), "--quick", "--out",
                           str(tmp_path / "out"), "--device", "cuda:0"])
    assert code == 0
    (result,) = json.loads((tmp_path / "out" / "calibration.json").read_text())["families"]
    assert result["fit"] is not None and result["fit"]["bytes_per_token"] > 0
    assert all(p["peak_bytes"] > 0 and p["estimate_after"] >= p["peak_bytes"] for p in result["points"]
               if not p["holdout"])
    assert result["loads"]["ram_s"] is not None
