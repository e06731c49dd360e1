"""On a machine with two or more CUDA GPUs: a gang on NCCL renders what one GPU renders (skipped elsewhere; the same
checks run on gloo ranks on the CPU in tests/gang/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from server.engine.gang_worker import GangWorker
from server.engine.work import Completed
from server.engine.worker import Worker
from tests.gang.renders import CONFIG, pixels, render_work
from weights.locate import LocatedWeights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                reason="needs two CUDA GPUs")


@pytest.mark.gpu
@pytest.mark.parametrize(("weights", "guidance"), [("wan2.2-ti2v-5b", 5.0), ("wan2.2-ti2v-5b", 1.0),
                                                   ("flux1-kontext-dev", 2.5), ("ltx-2", 3.0)])
def test_a_two_gpu_gang_renders_what_one_gpu_renders(demo_dir: Path, weights: str, guidance: float) -> None:
    located = {weights: LocatedWeights(CONFIG.manifest[weights], demo_dir / weights, True)}
    solo = Worker("w0", "cuda:0", torch.float32, located, CONFIG.memory)
    work = render_work(weights, guidance)
    alone = solo.render(work, lambda _d, _t: None)
    assert isinstance(alone, Completed)
    gang = GangWorker("gang2-0", ("cuda:0", "cuda:1"), ("w0", "w1"), "float32", located, CONFIG.parallel,
                      solo.footprint, CONFIG.memory, form_timeout_s=300, collective_timeout_s=120)
    try:
        spread = gang.render(work, lambda _d, _t: None)
        assert isinstance(spread, Completed), spread
        assert spread.runtime["gpus"] == 2
        a, b = pixels(alone), pixels(spread)
        # GPU kernels differ between a split and a whole sequence more than CPU ones: a few 8-bit levels.
        assert np.abs(a - b).mean() < 0.5 and np.abs(a - b).max() <= 8
    finally:
        gang.release()
