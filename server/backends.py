"""The parts a deployment swaps by setting (docs/deployment.md): the job store (SQLite or PostgreSQL), where files
live (the data dir or an S3-compatible bucket) and the workers (this machine's GPUs or a Ray cluster's). Each
builder returns the part behind its interface; nothing else in the server knows which one it got."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipelines.acceleration import LoadProfile
from server.config import DarkroomConfig
from server.engine.policy import ModelFootprint
from server.engine.variant_plan import CardProfile, VariantOption, VariantPlan, card_for
from server.engine.variant_setup import header_options, plan_ids, plan_weights
from server.engine.worker_handle import WorkerHandle
from server.jobs.sqlite import SqliteJobStore
from server.jobs.store import JobStore
from server.logs import route_torch_logs
from server.media.blobs import Blobs, LocalBlobs, S3Blobs
from server.settings import EngineSettings, FilesSettings, Settings
from weights.demo import locate_or_build
from weights.locate import LocatedWeights
from weights.manifest import WeightsEntry

log = logging.getLogger("darkroom")


def open_store(settings: Settings) -> JobStore:
    """PostgreSQL when a database URL is set, else SQLite in the data dir."""
    if settings.store.database_url is not None:
        from server.jobs.postgres import PostgresJobStore

        return PostgresJobStore(settings.store.database_url.get_secret_value(), lease_s=settings.store.lease_s)
    return SqliteJobStore(settings.files.data_dir / "jobs.sqlite3", lease_s=settings.store.lease_s,
                          synchronous=settings.store.sqlite_synchronous)


def open_blobs(files: FilesSettings) -> Blobs:
    """The bucket when one is set (created if missing), else the data dir."""
    if files.s3_bucket:
        return S3Blobs.connect(files.s3_endpoint_url, files.s3_bucket, files.s3_prefix, files.s3_region, create=True)
    return LocalBlobs(files.data_dir)


def prepare_weights(files: FilesSettings, demo: str, manifest: Mapping[str, WeightsEntry],
                    needed: set[str]) -> dict[str, LocatedWeights]:
    """Locate every needed weights entry; build demo weights where real ones are missing (unless demo=never)."""
    located: dict[str, LocatedWeights] = {}
    for name in sorted(needed):
        where = locate_or_build(manifest[name], files.resolved_weights_dir, files.demo_weights_dir, demo)
        if where is None:
            raise RuntimeError(f"no weights for {name}: run `darkroom weights pull {name}` (or allow demo weights)")
        located[name] = where
    return located


@dataclass
class Workers:
    """The workers the engine drives, where each weights entry lives (demo or real), and the Ray cluster when
    the workers are its actors."""

    handles: list[WorkerHandle]
    located: dict[str, LocatedWeights]
    cluster: Any = None


def local_worker(name: str, device: str, engine: EngineSettings, config: DarkroomConfig,
                 located: dict[str, LocatedWeights], profiles: Mapping[str, LoadProfile]) -> WorkerHandle:
    """A worker on one device of this machine (also what each Ray actor holds on its node)."""
    from server.engine.worker import Worker, device_budget, resolve_dtype

    route_torch_logs()

    reserve = int(engine.vram_reserve_gb * 1e9)
    limit = int(engine.memory_limit_gb * 1e9) if engine.memory_limit_gb else None
    dtype = resolve_dtype(engine.dtype, device)
    budget = device_budget(device, reserve, limit)
    card, options, planned = plan_device_variants(config, located, device, dtype, budget, engine.vram_reserve_gb)
    profiles = {w: p if p.variant_pinned or w not in planned else replace(p, variants=planned[w].order)
                for w, p in profiles.items()}
    worker = Worker(name, device, dtype, located, config.memory, budget, ram_budget=int(engine.offload_ram_gb * 1e9),
                    order=engine.residency_policy, transfer=config.costs.transfer, profiles=profiles,
                    lora_cache_bytes=int(engine.lora_cache_gb * 1e9))
    worker.card = card
    worker.variant_plans = [p.describe() for p in plan_ids(config, card, planned, options, engine.vram_reserve_gb)
                            if p.weights in located]
    return worker


def plan_device_variants(config: DarkroomConfig, located: Mapping[str, LocatedWeights], device: str, dtype: Any,
                         budget: int | None, reserve_gb: float
                         ) -> tuple[CardProfile, dict[str, list[VariantOption]], dict[str, VariantPlan]]:
    """The card profile of `device`, each located weights entry's variants (bytes from the weights' own file
    headers) and the plan of each on this device with the packages installed here."""
    from pipelines.quantize import installed_packages
    from pipelines.registry import family_class
    from server.engine.worker import device_facts

    name, memory, capability = device_facts(device)
    if budget is not None:
        memory = budget / 1e9 + reserve_gb  # a memory limit narrows the card
    card = card_for(config.cards, name, memory, capability)
    installed = installed_packages()
    options: dict[str, list[VariantOption]] = {}
    for weights, where in located.items():
        try:
            options[weights] = header_options(family_class(where.entry.family)(where.path, device, dtype),
                                              where.entry.variants)
        except Exception:  # any unreadable header (safetensors, GGUF, a lock file) plans it as bf16
            # Unreadable headers: nothing to plan with (bf16, size unknown); loading these weights then fails with
            # the real error and their jobs fail cleanly, as the worker's footprint does.
            log.exception("could not read the weight headers of %s to plan its variants", weights)
            options[weights] = [VariantOption("bf16", ModelFootprint(weights, ()), 0)]
    plans = {w: plan_weights(config, w, card, opts, reserve_gb, installed) for w, opts in options.items()}
    return card, options, plans


def build_workers(settings: Settings, config: DarkroomConfig) -> Workers:
    """One worker per local device, or one actor per GPU of the Ray cluster (`--backend ray`)."""
    needed = config.weights_needed()
    # The load profile does not depend on which weights turn out to be demo ones; the step-cache presets do.
    profiles = {w: config.acceleration.load_profile(w) for w in needed}
    if settings.cluster.backend == "ray":
        return _ray_workers(settings, config, needed, profiles)
    from server.engine.worker import resolve_devices

    route_torch_logs()  # before demo weights build: torch and torchao warn while they import
    located = prepare_weights(settings.files, settings.engine.demo, config.manifest, needed)
    devices = resolve_devices(settings.engine.device)
    handles = [local_worker(f"w{i}", dev, settings.engine, config, located, profiles)
               for i, dev in enumerate(devices)]
    return Workers(handles + gang_workers(handles, settings.engine, config, located, profiles), located)


def gang_sizes(setting: str, devices: list[str]) -> list[int]:
    """The gang sizes `DARKROOM_GANGS` asks for on these devices ('auto': 2, 4, 8 up to the CUDA devices)."""
    from server.engine.gangs import GANG_SIZES

    if setting == "off":
        return []
    if setting == "auto":
        cuda = [d for d in devices if d.startswith("cuda")]
        return [k for k in GANG_SIZES if k <= len(cuda)]
    sizes = sorted({int(k) for k in setting.split(",") if k.strip()})
    if any(k not in GANG_SIZES for k in sizes):
        raise ValueError(f"DARKROOM_GANGS may list only {', '.join(map(str, GANG_SIZES))} (or be auto / off)")
    return [k for k in sizes if k <= len(devices)]


def gang_workers(handles: list[WorkerHandle], engine: EngineSettings, config: DarkroomConfig,
                 located: dict[str, LocatedWeights], profiles: Mapping[str, LoadProfile]) -> list[WorkerHandle]:
    """One gang per aligned group of k devices for each gang size (devices 0-1, 2-3, ... for k = 2): the groups
    that share a switch or NVLink pair on most multi-GPU boards."""
    from server.engine.gang_worker import GangWorker
    from server.engine.worker import Worker

    solo = [h for h in handles if isinstance(h, Worker)]
    gangs: list[WorkerHandle] = []
    for k in gang_sizes(engine.gangs, [h.device for h in solo]):
        for start in range(0, len(solo) - k + 1, k):
            group = solo[start:start + k]
            budgets = [h.budget for h in group if h.budget is not None]
            gangs.append(GangWorker(
                f"gang{k}-{start}", tuple(h.device for h in group), tuple(h.name for h in group),
                str(group[0].dtype).removeprefix("torch."), located, config.parallel, group[0].footprint, config.memory,
                budget=min(budgets) if budgets else None, profiles=profiles,
                collective_timeout_s=engine.step_timeout_s))
    return gangs


def _ray_workers(settings: Settings, config: DarkroomConfig, needed: set[str],
                 profiles: dict[str, LoadProfile]) -> Workers:
    import os

    from server.cluster.ray_backend import ActorSpec, RayCluster

    # Ray's usage statistics would report to Anyscale; darkroom never phones home.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The sections and the config travel to each actor as they are (pickled by Ray); the file paths in them are
    # the same on every node (docs/deployment.md).
    spec = ActorSpec(settings.engine, settings.files, config, tuple(sorted(needed)), profiles)
    cluster = RayCluster(settings.cluster.ray_address, settings.cluster.ray_namespace, spec)
    # No waiting for workers here: the front end listens and queues work at once, and the engine leadership's
    # discovery adds each worker as its node offers one (a node rebooting, weights still loading). Which weights
    # run as demo ones is learnt from each worker as it joins.
    located = {name: LocatedWeights(config.manifest[name], Path(f"ray://{settings.cluster.ray_namespace}/{name}"),
                                    settings.engine.demo == "always") for name in needed}
    return Workers([], located, cluster)
