"""Which queued jobs a gang takes now: the engine's side of server/engine/gangs.py (the pure rule), reading the
few jobs it needs from the store. Torch-free: bytes, seconds and plans.

Gangs are considered only while the node has more idle GPUs than queued jobs (otherwise every job gets one GPU);
then each queued job, oldest first, gets the gang size `choose_gpus` picks, from the gangs whose devices are all
idle and not already promised to an earlier job.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.registry import family_class
from server.engine.costs import Costs
from server.engine.gangs import (
    GangCandidate,
    GangPolicy,
    OfferedLoad,
    ParallelSpec,
    choose_gpus,
    plan_for,
    rank_placement,
)
from server.engine.policy import ModelFootprint, NeverFits, Placement
from server.engine.request import GenerationRequest
from server.jobs.store import JobStore, QueuedJob

if TYPE_CHECKING:
    from server.config import DarkroomConfig
    from server.settings import EngineSettings

log = logging.getLogger("darkroom.engine")

_EXACT_QUEUE = 64
"""Queues up to this long have each new job's row read for its predicted seconds."""


@dataclass(frozen=True)
class GangView:
    """A gang as the rule sees it: its name, size, member workers and the weights it holds formed."""

    name: str
    gpus: int
    members: frozenset[str]
    on_gpu: bool
    formed: str | None = None
    budget: int | None = None
    """Bytes each of its devices may hold (None: unmanaged, a CPU)."""


@dataclass(frozen=True)
class _Job:
    model_id: str
    weights: str
    family: str
    seconds_one: float
    true_cfg: bool
    tokens: int
    loras: bool


class GangScheduling:
    """Decides, for the engine, which queued jobs gangs take (see the module docstring)."""

    def __init__(self, policy: GangPolicy, specs: Mapping[str, ParallelSpec], costs: Costs, store: JobStore,
                 footprint: Callable[[str], ModelFootprint] = lambda weights: ModelFootprint(weights, ()),
                 family_of: Callable[[str], str | None] = lambda _weights: None) -> None:
        self.policy = policy
        self.specs = specs
        self.costs = costs
        self.store = store
        self.footprint = footprint
        self.declined: OrderedDict[str, None] = OrderedDict()
        """Jobs a gang declined (NotSpread): they run on one device."""
        self._jobs: OrderedDict[str, _Job | None] = OrderedDict()
        self.family_of = family_of
        self.offered = OfferedLoad()
        """The GPUs arriving work needs: what a gang leaves free."""
        self._arrived: OrderedDict[str, None] = OrderedDict()

    @classmethod
    def of(cls, settings: EngineSettings, config: DarkroomConfig, store: JobStore,
           footprint: Callable[[str], ModelFootprint]) -> GangScheduling:
        """The engine's: the operator's bounds from `settings` (ValueError naming unknown ids in the per-id caps)."""
        served = set(config.catalog.ids()) | set(config.catalog.video_ids())
        unknown = sorted(set(settings.gang_max_gpus_per_id) - served)
        if unknown:
            raise ValueError(f"DARKROOM_GANG_MAX_GPUS_PER_ID names ids this server does not serve: "
                             f"{', '.join(unknown)}; served ids: {', '.join(sorted(served))}")
        policy = GangPolicy(settings.gang_max_gpus, settings.gang_max_gpus_per_id, settings.gang_min_efficiency,
                            settings.gang_min_job_s)
        return cls(policy, config.parallel, config.costs, store, footprint,
                   lambda weights: entry.family if (entry := config.manifest.get(weights)) else None)

    def _job(self, job_id: str) -> _Job | None:
        """What the rule needs of a queued job (read once per job)."""
        if job_id in self._jobs:
            return self._jobs[job_id]
        found: _Job | None = None
        try:
            record = self.store.get(job_id)
            if record is not None:
                request = GenerationRequest.from_json(record.request)
                p = request.params
                fam = family_class(request.family)
                cost = self.costs.families.get(fam.name)
                seconds = 0.0 if cost is None else cost.job_seconds(fam.denoising_steps(p), p.width * p.height,
                                                                    p.num_frames, p.num_images)
                spec = self.specs.get(fam.name)
                tokens = spec.sequence(p.width, p.height, p.num_frames) if spec else 0
                found = _Job(request.model_id, request.weights, fam.name, seconds, fam.true_cfg(p), tokens,
                             any(p.adapters_per_image()))
        except Exception:  # an unreadable row runs on one GPU, where its own error is reported
            log.debug("job %s is not considered for a gang", job_id, exc_info=True)
        self._jobs[job_id] = found
        while len(self._jobs) > 1024:
            self._jobs.popitem(last=False)
        return found

    def _count_arrivals(self, queue: Sequence[QueuedJob]) -> None:
        """Each queued job once into the offered load, at its predicted seconds on one GPU (every job passes
        through here while pending: the claim rounds look at the whole queue)."""
        # A long queue (a backlog after a restart, a burst) is counted at each family's reference job instead:
        # reading every row under the engine's lock would stall the claims; no gang forms then anyway.
        exact = len(queue) <= _EXACT_QUEUE
        for job in queue:
            if job.id in self._arrived:
                continue
            self._arrived[job.id] = None
            known = self._job(job.id) if exact else None
            if known is not None:
                self.offered.arrived(job.created_at, known.seconds_one)
            elif (cost := self.costs.families.get(self.family_of(job.weights or job.model) or "")) is not None:
                self.offered.arrived(job.created_at, cost.job_s)
        while len(self._arrived) > 4096:
            self._arrived.popitem(last=False)

    def wanted(self, queue: Sequence[QueuedJob], idle: set[str], gangs: Sequence[GangView], serving: int,
               now: float) -> dict[str, str]:
        """Job id -> the name of the gang that should take it now (the rest run on one GPU each). `idle` names the
        single-GPU workers that are idle, `serving` counts those running single-GPU jobs; `gangs` are the gangs
        not running."""
        self._count_arrivals(queue)
        if not gangs or len(queue) >= len(idle):
            return {}
        reserve = self.offered.reserve(now, serving)
        taken: set[str] = set()
        out: dict[str, str] = {}
        ordered = sorted(queue, key=lambda j: (-j.priority, j.created_at))
        for index, queued in enumerate(ordered):
            free = [g for g in gangs if g.members <= idle - taken]
            if not free:
                break
            job = None if queued.id in self.declined else self._job(queued.id)
            spec = self.specs.get(job.family) if job is not None else None
            if job is None or spec is None or job.loras:
                taken |= self._one_gpu(idle - taken)
                continue
            foot = self.footprint(job.weights)
            free = [g for g in free if self._fits(g, foot, queued.activation_bytes)]
            plans = {g.gpus: plan for g in free
                     if (plan := plan_for(spec, g.gpus, job.true_cfg, job.tokens, g.on_gpu)) is not None}
            nbytes = foot.bytes
            load = self.costs.transfer.load_seconds(nbytes, from_ram=False)
            formed = {g.gpus for g in free if g.formed == job.weights}
            candidate = GangCandidate(queued.id, job.model_id, job.seconds_one, plans, spec.speedup_at,
                                      weights_resident=True, load_s=load,
                                      gang_load_s={k: 0.0 if k in formed else load for k in plans})
            waiting = len(ordered) - index - 1
            k = choose_gpus(candidate, list(plans), len(idle - taken), waiting, self.policy, reserve)
            if k == 1:
                taken |= self._one_gpu(idle - taken)
                continue
            # Prefer a gang that holds the model already, then the first aligned one.
            gang = min((g for g in free if g.gpus == k), key=lambda g: (g.formed != job.weights, g.name))
            out[queued.id] = gang.name
            taken |= gang.members
        return out

    def decline(self, job_ids: list[str]) -> None:
        """A gang declined these jobs before starting them: from now on they run on one device."""
        for job_id in job_ids:
            self.declined[job_id] = None
        while len(self.declined) > 4096:
            self.declined.popitem(last=False)

    @staticmethod
    def _fits(gang: GangView, foot: ModelFootprint, activation: int) -> bool:
        """Whether each of the gang's devices holds the model whole or with model offload."""
        try:
            return rank_placement(gang.budget, foot, activation) is not Placement.GROUP_OFFLOAD
        except NeverFits:
            return False

    @staticmethod
    def _one_gpu(idle: set[str]) -> set[str]:
        # A job on one GPU takes one of the idle ones (which one is the scheduler's business): the last by name,
        # so the first aligned gangs stay whole as long as possible.
        return {max(idle)} if idle else set()
