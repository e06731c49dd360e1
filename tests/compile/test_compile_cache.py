"""Regional torch.compile on the tiny Kontext (CPU): the compiled model renders what the eager one does, the
warm-up at load pays the compilation (a request after it compiles nothing), switching LoRA adapters compiles
nothing, and a restart on the persisted cache compiles nothing at all. Two fresh processes on one cache directory: the compile group of the suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

# Inductor fuses and reorders float ops: a compiled render may differ from eager by a level here and there.
MAX_LEVEL_DIFF = 2
MAX_CHANGED = 0.01


def _probe(demo_dir: Path, cache: Path) -> dict:
    run = subprocess.run([sys.executable, "-m", "tests.compile.probe", str(demo_dir), str(cache)], cwd=REPO,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(1200)  # two fresh processes, each compiling or loading the compiled graphs (600 s limit each)
def test_compiled_equals_eager_and_a_restart_hits_the_persisted_cache(demo_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "compile-cache"
    first = _probe(demo_dir, cache)
    assert first["compile"]["active"] is True and first["compile"]["regions"]
    assert first["compile"]["fxgraph_cache_miss"] > 0  # a cold cache: the warm-up compiled
    assert first["max_diff"] <= MAX_LEVEL_DIFF and first["changed"] <= MAX_CHANGED
    assert first["request_compiled"] == 0  # the warm-up compiled the request's shape at load
    # LoRAs A -> B -> none -> A on the compiled model run in its LoRA slots (the adapted graphs compiled at
    # load): nothing recompiles, the plain render keeps its graphs, each matches the eager model's. A rank above
    # the slots' runs eagerly, says why, and compiles nothing either.
    assert first["lora_graphs_compiled"] == 0 and first["lora_plain_unchanged"] and first["lora_a_repeat_equal"]
    assert first["lora_vs_eager_max_diff"] <= MAX_LEVEL_DIFF and first["lora_changes_render"] > 0.5
    assert first["lora_a_stats"]["compiled"] is True and first["lora_a_stats"]["slotted"] > 0
    assert first["lora_wide_stats"]["compiled"] is False and "max rank 4" in first["lora_wide_stats"]["uncompiled"]
    assert first["lora_wide_vs_eager_max_diff"] <= MAX_LEVEL_DIFF
    second = _probe(demo_dir, cache)
    assert second["compile"]["fxgraph_cache_miss"] == 0, second  # nothing compiled again after the restart
    assert second["compile"]["fxgraph_cache_hit"] >= first["compile"]["fxgraph_cache_miss"]
    assert second["max_diff"] <= MAX_LEVEL_DIFF
    print(f"compile: first start {first['load_s']} s, restart {second['load_s']} s "
          f"({second['compile']['fxgraph_cache_hit']} graphs from the cache)")
