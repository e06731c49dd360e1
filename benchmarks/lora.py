"""What LoRA adapters cost: switching between them, serving many different ones at once, and each denoising step.

Three measurements on one family (FLUX.1 Kontext by default), each repeated in interleaved rounds and reported as
medians:

1. **Switch cost A -> B** (ms, no render): darkroom's per-call grouped adapters (wrap the targeted layers with B's
   tensors, the model untouched) vs diffusers' load/unload (`load_lora_weights` + `unload_lora_weights`, PEFT
   layers injected and removed) vs fuse/unfuse (load, `fuse_lora`, `unfuse_lora`, unload: what a server that bakes
   adapters into the weights pays per switch).
2. **8 requests with 8 different adapters**: one merged call (each image its own adapter: the grouped update) vs
   the same 8 requests one after another with darkroom's switch, and one after another through diffusers'
   load -> render -> unload (how a server without per-sample adapters serves them). Same images, seeds and steps
   on every side; the sides alternate within each round.
3. **Per-step overhead of unfused adapters** at ranks 16, 64 and 128: seconds per denoising step with one adapter
   vs none.

    python -m benchmarks.lora [--weights-dir DIR] [--size 128] [--steps 4] [--rounds 3]

Without --weights-dir it runs on the demo weights (built on the fly): the mechanism is real, the figures are a
CPU's on a tiny model; on a GPU with real weights the same script gives the figures that matter.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pipelines.base import AdapterUse, Family, RenderParams, RenderSpec, Task
from pipelines.lora_runtime import LoadedAdapter, adapters_applied, load_adapter
from pipelines.registry import family_class
from server.config import DarkroomConfig
from weights.demo import build_demo
from weights.demo_loras import make_adapter

WEIGHTS = "flux1-kontext-dev"
N_USERS = 8


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _render(fam: Family, params: RenderParams, adapters: dict[str, LoadedAdapter] | None = None) -> None:
    fam.render(RenderSpec(params), lambda _k, _n: None, adapters)


def switch_cost(fam: Family, files: dict[str, Path], adapters: dict[str, LoadedAdapter], rounds: int
                ) -> dict[str, float]:
    """ms to go from adapter A to adapter B, three ways (no render in between)."""
    main = next(iter(fam.pipelines.values()))
    denoisers = {n: m for n in fam.denoisers if (m := getattr(main, n, None)) is not None}
    shas = list(adapters)
    sides: dict[str, list[float]] = {"grouped_hot_swap_ms": [], "diffusers_load_unload_ms": [],
                                     "diffusers_fuse_unfuse_ms": []}
    paths = [str(files[s]) for s in shas[:2]]

    def grouped() -> None:
        for sha in shas[:2]:
            with adapters_applied(denoisers, ((AdapterUse(sha, 1.0),),), adapters, fam.device, fam.dtype):
                pass

    def load_unload() -> None:
        for i, path in enumerate(paths):
            main.load_lora_weights(path, adapter_name=f"s{i}")
            main.unload_lora_weights()

    def fuse_unfuse() -> None:
        for i, path in enumerate(paths):
            main.load_lora_weights(path, adapter_name=f"f{i}")
            main.fuse_lora(lora_scale=1.0)
            main.unfuse_lora()
            main.unload_lora_weights()

    for _ in range(rounds):
        sides["grouped_hot_swap_ms"].append(_timed(grouped) / 2)
        sides["diffusers_load_unload_ms"].append(_timed(load_unload) / 2)
        sides["diffusers_fuse_unfuse_ms"].append(_timed(fuse_unfuse) / 2)
    return {k: _median_ms(v) for k, v in sides.items()}


def many_users(fam: Family, files: dict[str, Path], adapters: dict[str, LoadedAdapter], params: RenderParams,
               rounds: int) -> dict[str, float]:
    """Seconds for 8 requests, each with its own adapter: one merged call vs one after another (two ways)."""
    main = next(iter(fam.pipelines.values()))
    shas = list(adapters)[:N_USERS]
    merged = replace(params, num_images=N_USERS, seeds=tuple(range(N_USERS)), prompts=(params.prompt,) * N_USERS,
                     image_loras=tuple((AdapterUse(s, 1.0),) for s in shas))

    def one_call() -> None:
        _render(fam, merged, adapters)

    def serial_grouped() -> None:
        for i, sha in enumerate(shas):
            _render(fam, replace(params, seeds=(i,), loras=(AdapterUse(sha, 1.0),)), adapters)

    def serial_diffusers() -> None:
        for i, sha in enumerate(shas):
            main.load_lora_weights(str(files[sha]), adapter_name=f"u{i}")
            _render(fam, replace(params, seeds=(i,)))
            main.unload_lora_weights()

    sides: dict[str, list[float]] = {"one_merged_call_s": [], "serial_hot_swap_s": [], "serial_load_unload_s": []}
    one_call()  # warm-up: first-call allocations are not what is compared
    for _ in range(rounds):
        sides["one_merged_call_s"].append(_timed(one_call))
        sides["serial_hot_swap_s"].append(_timed(serial_grouped))
        sides["serial_load_unload_s"].append(_timed(serial_diffusers))
    out = {k: round(statistics.median(v), 3) for k, v in sides.items()}
    out["speedup_vs_serial_hot_swap"] = round(out["serial_hot_swap_s"] / out["one_merged_call_s"], 2)
    out["speedup_vs_serial_load_unload"] = round(out["serial_load_unload_s"] / out["one_merged_call_s"], 2)
    return out


def step_overhead(fam: Family, weights: Path, tmp: Path, params: RenderParams, rounds: int) -> dict[str, Any]:
    """Seconds per denoising step with one unfused adapter of rank 16, 64, 128 vs none."""
    import diffusers

    cls = type(fam)
    ranked = {}
    for rank in (16, 64, 128):
        data = make_adapter(cls, weights, tmp / f"rank{rank}", seed=rank, rank=rank, alpha=rank).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        ranked[rank] = (sha, load_adapter(sha, data, getattr(diffusers, cls.pipeline_class), cls.denoisers))
    steps = params.num_inference_steps
    samples: dict[str, list[float]] = {"none": [], **{f"rank_{r}": [] for r in ranked}}
    for _ in range(rounds):
        samples["none"].append(_timed(lambda: _render(fam, params)) / steps)
        for rank, (sha, adapter) in ranked.items():
            samples[f"rank_{rank}"].append(_timed(lambda s=sha, a=adapter: _render(
                fam, replace(params, loras=(AdapterUse(s, 1.0),)), {s: a})) / steps)
    per_step = {k: round(statistics.median(v), 4) for k, v in samples.items()}
    return {"seconds_per_step": per_step,
            "overhead_pct": {k: round(100 * (v / per_step["none"] - 1), 1) for k, v in per_step.items() if k != "none"}}


def main() -> None:
    from benchmarks.harness import write_result

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=None, help="Real weights (default: demo weights)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    import diffusers

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = args.weights_dir or tmp / "weights"
        if args.weights_dir is None:
            build_demo(DarkroomConfig.packaged().manifest[WEIGHTS], root)
        cls = family_class("flux-kontext")
        fam = cls(root / WEIGHTS, device, dtype)
        fam.load()
        files: dict[str, Path] = {}
        adapters: dict[str, LoadedAdapter] = {}
        for i in range(N_USERS):
            path = make_adapter(cls, root / WEIGHTS, tmp / f"user{i}", seed=100 + i, rank=16, alpha=16)
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            files[sha] = path
            adapters[sha] = load_adapter(sha, data, getattr(diffusers, cls.pipeline_class), cls.denoisers)
        params = RenderParams(Task.GENERATE, "a red fox in the snow", args.size, args.size, 1, (0,), args.steps,
                              3.5, 1.0)
        switch = switch_cost(fam, files, adapters, args.rounds)
        print(f"switch A->B: grouped {switch['grouped_hot_swap_ms']} ms, diffusers load/unload "
              f"{switch['diffusers_load_unload_ms']} ms, fuse/unfuse {switch['diffusers_fuse_unfuse_ms']} ms")
        users = many_users(fam, files, adapters, params, args.rounds)
        print(f"{N_USERS} users x {N_USERS} adapters: one call {users['one_merged_call_s']} s, serial hot-swap "
              f"{users['serial_hot_swap_s']} s ({users['speedup_vs_serial_hot_swap']}x), serial load/unload "
              f"{users['serial_load_unload_s']} s ({users['speedup_vs_serial_load_unload']}x)")
        overhead = step_overhead(fam, root / WEIGHTS, tmp, params, args.rounds)
        print(f"per step: {overhead['seconds_per_step']}  overhead %: {overhead['overhead_pct']}")
    name = "cpu" if device == "cpu" else torch.cuda.get_device_name(0).replace(" ", "_")
    out = write_result(name, "lora", {
        "weights": "demo" if args.weights_dir is None else str(args.weights_dir), "family": "flux-kontext",
        "device": device, "dtype": str(dtype).removeprefix("torch."), "size": args.size, "steps": args.steps,
        "rounds": args.rounds, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "command": "python -m benchmarks.lora " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                           vars(args).items() if v is not None),
        "switch": switch, "many_users": users, "step_overhead": overhead})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
