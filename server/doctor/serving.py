"""What the configuration serves, judged on this machine: attention and weight variants, each weights entry on disk,
the variant and placement each id will run at here, and whether each served id fits at its default size (GPU memory from the safetensors headers and the memory formulas admission
uses; host RAM for CPU placement and for offloaded weights)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from server.config import DarkroomConfig
from server.default_requests import default_params
from server.doctor.findings import GB, LEVELS, Level, Sink
from server.doctor.machine import device_present, host_ram, ram_verdict
from weights.manifest import WeightsEntry

WeightStates = dict[str, tuple[str, Path | None]]
"""Per weights entry: verified, broken, demo, demo-to-build or missing, and where it is."""


def acceleration(doc: Sink, devices: list[str], config: DarkroomConfig | None) -> None:
    """Attention backends and weight variants per device, and the configured backends that are not usable here
    (the models that ask for them first fall back, which is slower than configured)."""
    from pipelines.acceleration import ATTENTION_BACKENDS, capability_of, choose_attention
    from pipelines.quantize import installed_packages
    from pipelines.variants import VARIANTS, why_not_on

    profiles = {w: config.acceleration.load_profile(w).attention for w in sorted(config.weights_needed())} \
        if config is not None else {}
    for dev in devices:
        usable = [b for b in ATTENTION_BACKENDS if choose_attention((b,), dev, dispatches=True)[0] == b]
        capability, installed = capability_of(dev), installed_packages()
        variants = [n for n, v in VARIANTS.items() if why_not_on(v, capability, installed) is None]
        doc.add("acceleration", "ok", f"{dev}: attention backends usable here: {', '.join(usable)}; weight variants "
                f"that can load here: {', '.join(variants)}")
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
    params, full = default_params(spec, fam, draft=cpu_only), default_params(spec, fam)
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
    from server.backends import plan_device_variants

    located = {entry.name: LocatedWeights(entry, path, demo)}
    dtype = resolve_dtype(e.dtype, dev)
    _card, _options, plans = plan_device_variants(config, located, dev, dtype, budget, e.vram_reserve_gb)
    profile = replace(config.acceleration.load_profile(entry.name), variants=plans[entry.name].order)
    worker = Worker("doctor", dev, dtype, located, config.memory, budget, profiles={entry.name: profile})
    footprint = worker.footprint(entry.name)  # at the variant planned for this device
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


def variants(doc: Sink, devices: list[str], states: WeightStates, config: DarkroomConfig | None) -> None:
    """Per device and served id: the weight variant and placement it will run at here and the estimated seconds of
    its default request (configs/cards.toml's speeds for the nearest card); a pin this device cannot run is an
    error."""
    if config is None:
        return
    from server.backends import plan_device_variants
    from server.engine.variant_setup import plan_ids
    from server.engine.worker import device_budget, resolve_dtype
    from weights.locate import LocatedWeights

    e = doc.settings.engine
    located = {name: LocatedWeights(config.manifest[name], path, state == "demo")
               for name, (state, path) in states.items() if path is not None and name in config.weights_needed()}
    if not located:
        return
    limit = int(e.memory_limit_gb * GB) if e.memory_limit_gb else None
    for dev in devices:
        if not (dev.startswith("cpu") or device_present(dev)):
            continue
        budget = device_budget(dev, int(e.vram_reserve_gb * GB), limit)
        card, options, plans = plan_device_variants(config, located, dev, resolve_dtype(e.dtype, dev), budget,
                                                    e.vram_reserve_gb)
        for row in plan_ids(config, card, plans, options, e.vram_reserve_gb):
            if row.weights not in located:
                continue
            d = row.describe()
            if d["variant"] is None:
                level: Level = "error" if row.plan.pinned else "warning"
                doc.add("variants", level, f"{row.model_id} on {dev} ({card.label}): no variant runs here: "
                        f"{d['why_not']}", "unpin the variant in acceleration.toml, install the package it names, "
                        "or pull its files" if row.plan.pinned else None)
                continue
            tier = f" at {row.tier} (the default tier fits no variant here)" if row.tier else ""
            whose = "the real weights' " if located[row.weights].demo else ""
            doc.add("variants", "ok", f"{row.model_id} on {dev} ({card.label}): {d['variant']}"
                    f"{' (pinned)' if row.plan.pinned else ''}, {d['placement']}{tier}, ~{d['seconds']} s per "
                    f"{whose}default request (floor {d['floor']}; estimated from cards.toml, uncalibrated)")
