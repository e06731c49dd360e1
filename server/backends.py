"""The parts a deployment swaps by setting (docs/deployment.md): the job store (SQLite or PostgreSQL), where files
live (the data dir or an S3-compatible bucket) and the workers (this machine's GPUs or a Ray cluster's). Each
builder returns the part behind its interface; nothing else in the server knows which one it got."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.memory import load_memory_table
from server.acceleration_config import Acceleration
from server.engine.costs import load_costs
from server.engine.worker_handle import WorkerHandle
from server.jobs.sqlite import SqliteJobStore
from server.jobs.store import JobStore
from server.media.blobs import Blobs, LocalBlobs, S3Blobs
from server.settings import Settings
from weights.demo import locate_or_build
from weights.locate import LocatedWeights
from weights.manifest import WeightsEntry

log = logging.getLogger("darkroom")


def open_store(settings: Settings) -> JobStore:
    """PostgreSQL when a database URL is set, else SQLite in the data dir."""
    if settings.database_url is not None:
        from server.jobs.postgres import PostgresJobStore

        return PostgresJobStore(settings.database_url.get_secret_value(), lease_s=settings.lease_s)
    return SqliteJobStore(settings.data_dir / "jobs.sqlite3", lease_s=settings.lease_s,
                          synchronous=settings.sqlite_synchronous)


def open_blobs(settings: Settings) -> Blobs:
    """The bucket when one is set (created if missing), else the data dir."""
    if settings.s3_bucket:
        return S3Blobs.connect(settings.s3_endpoint_url, settings.s3_bucket, settings.s3_prefix, settings.s3_region,
                               create=True)
    return LocalBlobs(settings.data_dir)


def prepare_weights(settings: Settings, manifest: dict[str, WeightsEntry], needed: set[str]) -> dict[str, LocatedWeights]:
    """Locate every needed weights entry; build demo weights where real ones are missing (unless demo=never)."""
    located: dict[str, LocatedWeights] = {}
    for name in sorted(needed):
        where = locate_or_build(manifest[name], settings.resolved_weights_dir, settings.demo_weights_dir,
                                settings.demo)
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


def build_workers(settings: Settings, manifest: dict[str, WeightsEntry], needed: set[str],
                  acceleration: Acceleration) -> Workers:
    """One worker per local device, or one actor per GPU of the Ray cluster (`--backend ray`)."""
    profiles = {w: acceleration.load_profile(w) for w in needed}
    if settings.backend == "ray":
        return _ray_workers(settings, manifest, needed, profiles)
    from server.engine.worker import Worker, device_budget, resolve_devices, resolve_dtype

    located = prepare_weights(settings, manifest, needed)
    costs = load_costs(settings.config("costs.toml"))
    memory = load_memory_table(settings.config("memory.toml"))
    reserve = int(settings.vram_reserve_gb * 1e9)
    limit = int(settings.memory_limit_gb * 1e9) if settings.memory_limit_gb else None
    handles: list[WorkerHandle] = [
        Worker(f"w{i}", dev, resolve_dtype(settings.dtype, dev), located, device_budget(dev, reserve, limit),
               ram_budget=int(settings.offload_ram_gb * 1e9), order=settings.residency_policy,
               transfer=costs.transfer, memory=memory, profiles=profiles)
        for i, dev in enumerate(resolve_devices(settings.device))]
    return Workers(handles, located)


def _ray_workers(settings: Settings, manifest: dict[str, WeightsEntry], needed: set[str],
                 profiles: dict[str, Any]) -> Workers:
    import os

    from server.cluster.ray_backend import ActorSettings, RayCluster

    # Ray's usage statistics would report to Anyscale; darkroom never phones home.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    actor_settings = ActorSettings(
        weights_dir=str(settings.resolved_weights_dir.resolve()), demo_weights_dir=str(settings.demo_weights_dir.resolve()),
        demo=settings.demo, dtype=settings.dtype, vram_reserve_gb=settings.vram_reserve_gb,
        memory_limit_gb=settings.memory_limit_gb, offload_ram_gb=settings.offload_ram_gb,
        residency_policy=settings.residency_policy, config_dir=str(Path(settings.config_dir).resolve()),
        needed=tuple(sorted(needed)), profiles=profiles)
    cluster = RayCluster(settings.ray_address, settings.ray_namespace, actor_settings)
    # No waiting for workers here: the front end listens and queues work at once, and the engine leadership's
    # discovery adds each worker as its node offers one (a node rebooting, weights still loading). Which weights
    # run as demo ones is learnt from each worker as it joins.
    located = {name: LocatedWeights(manifest[name], Path(f"ray://{settings.ray_namespace}/{name}"),
                                    settings.demo == "always") for name in needed}
    return Workers([], located, cluster)
