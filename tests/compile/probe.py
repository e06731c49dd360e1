"""One process's view of regional compile on the tiny Kontext, with the step cache's hooks as Kontext is served: load
with compile on (the warm-up compiles at
load), render an edit compiled and eager, and print what inductor's persisted cache did. Run twice on one cache
directory by tests/compile/test_compile_cache.py."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def main(demo_dir: Path, cache_dir: Path) -> None:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    import numpy as np
    import torch
    from PIL import Image

    from pipelines.acceleration import LoadProfile, compile_counters
    from pipelines.base import RenderParams, RenderSpec, Task
    from pipelines.flux_kontext import FluxKontextFamily

    def edit(fam: FluxKontextFamily, loras: tuple[Any, ...] = (), adapters: Any = None) -> np.ndarray:
        params = RenderParams(Task.EDIT, "add a hat", 256, 256, 1, (5,), 4, 2.5, 1.0, num_sources=1, loras=loras)
        spec = RenderSpec(params, sources=(Image.new("RGB", (256, 256), (200, 40, 40)),))
        result = fam.render(spec, lambda *_: None, adapters)
        last_stats.clear()
        last_stats.update(result.stats)
        return np.asarray(result.images[0]).astype(int)

    last_stats: dict[str, Any] = {}

    started = time.perf_counter()
    compiled = FluxKontextFamily(demo_dir / "flux1-kontext-dev", "cpu", torch.float32,
                                 LoadProfile(compile="on", step_cache_hooks=True, warmup=((256, 256, 0),),
                                             lora_slots=2, lora_max_rank=4))
    compiled.load()
    load_s = time.perf_counter() - started
    assert compiled.applied is not None
    record = compiled.applied.record()["compile"]
    before = compile_counters()["fxgraph_cache_miss"]
    started = time.perf_counter()
    out = edit(compiled)
    request_s = time.perf_counter() - started
    request_compiled = compile_counters()["fxgraph_cache_miss"] - before
    eager = FluxKontextFamily(demo_dir / "flux1-kontext-dev", "cpu", torch.float32)
    eager.load()
    diff = np.abs(out - edit(eager))
    print(json.dumps({"compile": record, "load_s": round(load_s, 2), "request_s": round(request_s, 2),
                      "request_compiled": request_compiled,
                      **_lora_switches(demo_dir, compiled, eager, edit, out, last_stats),
                      "max_diff": int(diff.max()), "changed": float((diff > 0).mean())}))


def _lora_switches(demo_dir: Path, compiled: Any, eager: Any, edit: Any, plain: Any,
                   last_stats: dict[str, Any]) -> dict[str, Any]:
    """A -> B -> none -> A on the compiled model (adapters in its LoRA slots), then a rank above the slots' max:
    how many graphs dynamo compiled meanwhile, whether the renders match the eager model's, and what each call
    recorded."""
    import hashlib
    import tempfile

    import diffusers
    import numpy as np
    import torch

    from pipelines.base import AdapterUse
    from pipelines.lora_runtime import load_adapter
    from weights.demo_loras import make_adapter

    adapters = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, rank in ((1, 4), (2, 4), (3, 8)):
            data = make_adapter(type(eager), demo_dir / "flux1-kontext-dev", Path(tmp) / str(seed), seed,
                                rank=rank).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            adapters[sha] = load_adapter(sha, data, diffusers.FluxKontextPipeline, ("transformer",))
    a, b, wide = list(adapters)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    renders, stats = [], []
    for uses in ((AdapterUse(a),), (AdapterUse(b),), (), (AdapterUse(a),), (AdapterUse(wide),)):
        renders.append(edit(compiled, uses, adapters))
        stats.append(dict(last_stats.get("loras") or {}))
    compiled_meanwhile = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
    eager_a = edit(eager, (AdapterUse(a),), adapters)
    eager_wide = edit(eager, (AdapterUse(wide),), adapters)
    return {"lora_graphs_compiled": compiled_meanwhile,
            "lora_plain_unchanged": bool(np.array_equal(renders[2], plain)),
            "lora_a_repeat_equal": bool(np.array_equal(renders[0], renders[3])),
            "lora_vs_eager_max_diff": int(np.abs(renders[0] - eager_a).max()),
            "lora_wide_vs_eager_max_diff": int(np.abs(renders[4] - eager_wide).max()),
            "lora_changes_render": float(np.abs(renders[0] - plain).mean()),
            "lora_a_stats": stats[0], "lora_wide_stats": stats[4]}


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
