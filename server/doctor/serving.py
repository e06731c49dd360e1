"""What the configuration serves, judged on this machine: attention and fp8, each weights entry on disk, and whether
each served id fits at its default size (GPU memory from the safetensors headers and the memory formulas admission
uses; host RAM for CPU placement and for offloaded weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.config import DarkroomConfig
from server.doctor.findings import GB, LEVELS, Level, Sink
from server.doctor.machine import device_present, host_ram, ram_verdict
from weights.manifest import WeightsEntry

WeightStates = dict[str, tuple[str, Path | None]]
"""Per weights entry: verified, broken, demo, demo-to-build or missing, and where it is."""


def acceleration(doc: Sink, devices: list[str], config: DarkroomConfig | None) -> None:
    """Attention backends and fp8 per device, and the configured backends that are not usable here (the models
    that ask for them first fall back, which is slower than configured)."""
    from pipelines.acceleration import ATTENTION_BACKENDS, choose_attention, choose_fp8

    profiles = {w: config.acceleration.load_profile(w).attention for w in sorted(config.weights_needed())} \
        if config is not None else {}
    for dev in devices:
        usable = [b for b in ATTENTION_BACKENDS if choose_attention((b,), dev, dispatches=True)[0] == b]
        fp8, reason = choose_fp8("prefer", dev)
        doc.add("acceleration", "ok", f"{dev}: attention backends usable here: {', '.join(usable)}; fp8: "
                f"{'yes' if fp8 else 'no (' + str(reason) + ')'}")
        falls_back: dict[tuple[str, str], list[str]] = {}
        for weights, preference in profiles.items():
            chosen, reasons = choose_attention(preference, dev, dispatches=True)
            if reasons:
                falls_back.setdefault((reasons[0], chosen), []).append(weights)
        for (why, chosen), names in sorted(falls_back.items()):
            doc.add("acceleration", "warning", f"{dev}: {', '.join(sorted(names))} ask for "
                    f"{why.split(':', 1)[0]} attention first, which is not usable here ({why.split(': ', 1)[-1]}); "
                    f"they run with {chosen}", "run on a GPU the backend supports (or install its package), or "
                    "put the backend you have first in acceleration.toml in the config dir")


def weights(doc: Sink, config: DarkroomConfig | None) -> WeightStates:
    """Each weights entry: verified (pulled), real but unverified, demo, or missing; with its licence."""
    from weights.locate import LOCK_FILE, demo_weights_ready, real_weights_ready

    s = doc.settings
    states: WeightStates = {}
    for entry in (config.manifest.values() if config is not None else ()):
        real = s.files.resolved_weights_dir / entry.name
        demo = s.files.demo_weights_dir / entry.name
        licence = f"licence {entry.license}"
        if real_weights_ready(real):
            states[entry.name] = _verified(doc, entry, real, licence)
            continue
        if (real / "model_index.json").is_file() and not (real / LOCK_FILE).exists():
            doc.add("weights", "warning", f"{entry.name}: {real} holds weights that were not pulled by darkroom "
                    "(no lock file), so they are not used", f"run `darkroom weights pull {entry.name}`")
        if s.engine.demo != "never" and demo_weights_ready(demo, entry):
            states[entry.name] = ("demo", demo)
            doc.add("weights", "ok", f"{entry.name}: demo weights (tiny, random: outputs are noise), {licence}")
        elif s.engine.demo != "never":
            states[entry.name] = ("demo-to-build", None)
            doc.add("weights", "ok", f"{entry.name}: missing; demo weights are built at first start, {licence}")
        else:
            states[entry.name] = ("missing", None)
            doc.add("weights", "ok", f"{entry.name}: missing, {licence}")
    return states


def _verified(doc: Sink, entry: WeightsEntry, real: Path, licence: str) -> tuple[str, Path | None]:
    from weights.locate import read_lock
    from weights.pull import PullError, verify

    try:
        verify(entry, real)
    except (PullError, OSError, ValueError) as exc:
        doc.add("weights", "error", f"{entry.name}: real weights in {real} do not verify: {exc}",
                f"run `darkroom weights pull {entry.name}` again")
        return "broken", None
    commit = str(read_lock(real).get("commit", "?"))[:12]
    doc.add("weights", "ok", f"{entry.name}: verified real weights ({entry.repo}@{commit}), {licence}")
    return "verified", real


def models(doc: Sink, devices: list[str], states: WeightStates, config: DarkroomConfig | None) -> None:
    """Whether each configured id can run here at its default size: fits, needs offload, or cannot."""
    if config is None:
        return
    for spec in [*config.catalog.specs(), *config.catalog.video_specs()]:
        state, path = states.get(spec.weights, ("missing", None))
        if state in ("missing", "broken"):
            doc.add("models", "error", f"{spec.id}: cannot run: no weights for {spec.weights} (demo mode is "
                    f"{doc.settings.engine.demo!r})", f"run `darkroom weights pull {spec.weights}`, or allow demo "
                    "weights (--demo auto)")
            continue
        if path is None:
            doc.add("models", "ok", f"{spec.id}: runs on demo weights built at first start")
            continue
        doc.add("models", *_fit(doc, config, spec, config.manifest[spec.weights], path, state == "demo", devices))


def _fit(doc: Sink, config: DarkroomConfig, spec: Any, entry: WeightsEntry, path: Path, demo: bool,
         devices: list[str]) -> tuple[Level, str, str | None]:
    from pipelines.registry import family_class

    fam = family_class(spec.family)
    # On a CPU-only server a clip asked for without a resolution gets the draft tier (server/service.py).
    cpu_only = all(d.startswith("cpu") for d in devices)
    params, full = _default_params(spec, fam, draft=cpu_only), _default_params(spec, fam)
    verdicts = [_verdict_on(doc, config, fam, entry, path, demo, dev, params, full) for dev in devices]
    best = min(verdicts, key=lambda v: LEVELS.index(v[0]))
    name = f"{spec.id}{' (demo weights)' if demo else ''}"
    fix = None
    if best[0] == "error":
        fix = "use a GPU (or a machine) with more memory, lower the default tier in models.toml, or leave the id " \
              "out (--models)"
    return best[0], f"{name}: {'; '.join(v[1] for v in verdicts)}", fix


def _verdict_on(doc: Sink, config: DarkroomConfig, fam: Any, entry: WeightsEntry, path: Path, demo: bool, dev: str,
                params: Any, full: Any) -> tuple[Level, str]:
    """One device's verdict on one id at its default size."""
    from server.engine.policy import EVICTION_ORDERS, DeviceState, NeverFits, Placement, plan_residency
    from server.engine.worker import Worker, device_budget, resolve_dtype
    from weights.locate import LocatedWeights

    e = doc.settings.engine
    coeffs = config.coefficients(fam.name)
    activation = fam.activation_bytes(params, 1, coeffs)
    limit = int(e.memory_limit_gb * GB) if e.memory_limit_gb else None
    budget = device_budget(dev, int(e.vram_reserve_gb * GB), limit) if dev.startswith("cpu") or device_present(dev) \
        else None
    worker = Worker("doctor", dev, resolve_dtype(e.dtype, dev), {entry.name: LocatedWeights(entry, path, demo)},
                    config.memory, budget)
    footprint = worker.footprint(entry.name)
    where = f"{dev} at {params.width}x{params.height}" + (f"x{params.num_frames}f" if params.num_frames else "")
    try:
        plan = plan_residency(DeviceState(dev, budget), footprint, activation, {}, EVICTION_ORDERS["lru"],
                              config.costs.transfer)
    except NeverFits as exc:
        return "error", f"cannot: needs {exc.need / GB:.1f} GB even with offload, {dev} has {exc.have / GB:.1f} GB"
    need, ram = (footprint.bytes + activation) / GB, host_ram()
    if budget is not None and plan.placement is Placement.RESIDENT:
        return "ok", f"fits on {where} ({need:.1f} GB of {budget / GB:.1f} GB)"
    if budget is not None:
        level, text = ram_verdict(where, footprint.bytes / GB, ram, "offloaded weights wait in host RAM")
        return ("error" if level == "error" else "warning",
                f"needs offload on {where} ({plan.placement.value}: {need:.1f} GB > {budget / GB:.1f} GB; slower)"
                + ("" if level == "ok" else "; " + text))
    level, text = ram_verdict(where, need, ram, "on the CPU, weights and activations live in RAM")
    if full != params:  # the draft tier by default: say what the model's own default would need
        full_need = (footprint.bytes + fam.activation_bytes(full, 1, coeffs)) / GB
        over, _why = ram_verdict("", full_need, ram, "")
        text += (f" (the CPU's draft default; {full.width}x{full.height}x{full.num_frames}f, asked for explicitly, "
                 f"needs ~{full_need:.1f} GB" + (", more than the machine has)" if over == "error" else ")"))
        level = "warning" if over == "error" and level == "ok" else level
    return level, text


def _default_params(spec: Any, fam: Any, draft: bool = False) -> Any:
    """A request at the id's defaults (an edit of one source when it edits), at the default tier, square; a clip at
    the draft tier with `draft` (what a CPU-only server gives a request without a resolution)."""
    from pipelines.base import RenderParams, Task
    from server.catalog import QUALITY_LONG_SIDE, RESOLUTION_SHORT_SIDE, VideoModelSpec
    from server.resolve import DRAFT_TIER

    d = spec.defaults
    if isinstance(spec, VideoModelSpec):
        tier = DRAFT_TIER if draft and DRAFT_TIER in spec.resolutions else d.resolution
        short = RESOLUTION_SHORT_SIDE[tier]
        width, height = short * 16 // 9 // 16 * 16, short
        return RenderParams(task=Task.IMAGE_TO_VIDEO, prompt="doctor", width=width, height=height, num_images=1,
                            seeds=(0,), num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale,
                            strength=1.0, num_sources=1, num_frames=fam.valid_frames(d.duration * d.fps),
                            fps=float(d.fps))
    side = QUALITY_LONG_SIDE[spec.default_quality]
    edits = spec.max_source_images > 0
    return RenderParams(task=Task.EDIT if edits else Task.GENERATE, prompt="doctor", width=side, height=side,
                        num_images=spec.default_num_images, seeds=(0,) * spec.default_num_images,
                        num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale,
                        strength=d.strength, num_sources=1 if edits else 0)
