"""Gangs: how many GPUs one job takes, as bytes and seconds. No torch, no I/O, no clock.

A gang is k GPUs of one node held together for one job (k in {2, 4, 8}); its ranks each hold the whole model and
split the denoiser's work (pipelines/parallel.py). Two questions, answered here for the engine and the simulator:

1. *Can this job be spread over k, and how?* (`plan_for`): the family's declared plans (configs/parallel.toml):
   CFG parallel first where the request runs true CFG (two ranks), the rest as Ulysses when the degree divides the
   heads and the sequence, else ring attention on GPUs.
2. *Should it be?* (`choose_gpus`): a job takes k GPUs only when (a) k GPUs are free that no other waiting job
   could use now and that arriving work will not want meanwhile (each waiting job is owed one GPU first, and the
   GPUs the arriving work keeps busy on average (`OfferedLoad`) beyond those serving single jobs now are left
   free: a loaded node runs one job per GPU, which is where throughput is highest, since no spread is perfectly
   efficient; short jobs keep GPUs to land on while a long clip is spread), (b) the spread is
   efficient enough (speed-up / k at least `min_efficiency`), and (c) it finishes sooner than on one GPU counting
   the gang's own load. Of those, the k that finishes the job soonest wins: on idle GPUs, latency is what the
   waiting artist has left to lose.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.parallel_plan import ParallelPlan
from server.engine.policy import EVICTION_ORDERS, DeviceState, ModelFootprint, Placement, Transfer, plan_residency

GANG_SIZES = (2, 4, 8)


@dataclass(frozen=True)
class ParallelSpec:
    """What one family can be spread with (configs/parallel.toml)."""

    family: str
    degrees: tuple[int, ...]
    ulysses: bool
    ring: bool
    cfg: bool
    heads: int
    token_px: int
    frame_step: int
    vae_tiled: bool
    speedup: Mapping[int, float]
    uneven: bool = False
    """The sequence holds unpadded text tokens: Ulysses / ring run in diffusers' any-length mode."""

    def speedup_at(self, k: int) -> float:
        """Seconds on one GPU over seconds on k (1 when the family does not run at k)."""
        return 1.0 if k == 1 else self.speedup.get(k, 1.0)

    def sequence(self, width: int, height: int, frames: int) -> int:
        """Tokens the denoiser attends over for an output of this size (frames 0: a still image)."""
        latent_frames = (max(frames, 1) - 1) // self.frame_step + 1 if self.frame_step else 1
        return (width // self.token_px) * (height // self.token_px) * latent_frames


def load_parallel(path: Path) -> dict[str, ParallelSpec]:
    """Parse parallel.toml; ValueError naming the entry on a degree the policy cannot use."""
    raw = tomllib.loads(path.read_text())
    specs: dict[str, ParallelSpec] = {}
    for name, body in raw.get("families", {}).items():
        degrees = tuple(int(k) for k in body["degrees"])
        if any(k not in GANG_SIZES for k in degrees):
            raise ValueError(f"{path.name}: families.{name}.degrees may hold only {GANG_SIZES}")
        speedup = {int(k): float(v) for k, v in body.get("speedup", {}).items()}
        if set(speedup) != set(degrees):
            raise ValueError(f"{path.name}: families.{name} needs one speedup per degree")
        specs[name] = ParallelSpec(name, degrees, bool(body["ulysses"]), bool(body["ring"]), bool(body["cfg"]),
                                   int(body["heads"]), int(body["token_px"]), int(body["frame_step"]),
                                   body.get("vae") == "tiled", speedup, bool(body.get("uneven", False)))
    return specs


def plan_for(spec: ParallelSpec, k: int, true_cfg: bool, tokens: int, on_gpu: bool) -> ParallelPlan | None:
    """How a request spreads over k ranks, or None when it cannot (k not declared, heads or sequence indivisible,
    ring needed on a CPU)."""
    if k == 1:
        return ParallelPlan()
    if k not in spec.degrees:
        return None
    cfg = 2 if spec.cfg and true_cfg else 1
    rest = k // cfg
    if rest == 1:
        return ParallelPlan(cfg=cfg, vae_tiling=spec.vae_tiled)
    if tokens % rest and not spec.uneven:
        return None
    if spec.ulysses and spec.heads % rest == 0:
        return ParallelPlan(ulysses=rest, cfg=cfg, vae_tiling=spec.vae_tiled, uneven=spec.uneven)
    if spec.ring and on_gpu:
        return ParallelPlan(ring=rest, cfg=cfg, vae_tiling=spec.vae_tiled, uneven=spec.uneven)
    return None


def rank_placement(budget: int | None, footprint: ModelFootprint, activation: int) -> Placement:
    """How a rank holds a model on a device of `budget` bytes (each rank holds the whole model): the residency
    policy's answer on an empty device; NeverFits when not even offload fits. A gang runs resident or with model
    offload, never group offload."""
    return plan_residency(DeviceState("rank", budget), footprint, activation, {}, EVICTION_ORDERS["lru"],
                          Transfer()).placement


@dataclass(frozen=True)
class GangPolicy:
    """The operator's bounds on gangs (EngineSettings)."""

    max_gpus: int = 8
    max_gpus_per_id: Mapping[str, int] | None = None
    min_efficiency: float = 0.35
    """Speed-up over GPUs taken below which a spread wastes more than it saves."""
    min_job_s: float = 3.0
    """Jobs predicted shorter than this on one GPU stay on one: forming a gang costs more than it saves."""

    def cap(self, model_id: str) -> int:
        """The most GPUs `model_id` may take."""
        per_id = (self.max_gpus_per_id or {}).get(model_id)
        return min(self.max_gpus, per_id) if per_id is not None else self.max_gpus


@dataclass(frozen=True)
class GangCandidate:
    """What the policy needs of a queued job: its id, its model, its predicted seconds on one GPU, and which gang
    sizes it could run at (with their plans)."""

    job_id: str
    model_id: str
    seconds_one: float
    plans: Mapping[int, ParallelPlan]
    speedup: Callable[[int], float]
    weights_resident: bool = True
    """Whether the model is on an idle GPU already (a single-GPU run pays no load)."""
    load_s: float = 0.0
    """Seconds a gang of the job's model needs to load it (0 when a gang holds it)."""
    gang_load_s: Mapping[int, float] | None = None


class OfferedLoad:
    """The GPUs the node's arriving work needs on average: single-GPU seconds arriving per second, as a moving
    average over the last `tau_s` seconds (Little's law: that many GPUs are kept busy by it). Measured from what
    arrives, not from what is busy, so gangs holding GPUs do not make the node look loaded."""

    def __init__(self, tau_s: float = 600.0) -> None:
        self.tau_s = tau_s
        self._seconds = 0.0
        self._last: float | None = None

    def _decay(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._seconds *= math.exp(-(now - self._last) / self.tau_s)
        self._last = now if self._last is None else max(self._last, now)

    def arrived(self, now: float, seconds: float) -> None:
        """A job arrived that takes `seconds` on one GPU."""
        self._decay(now)
        self._seconds += seconds

    def gpus(self, now: float) -> float:
        """GPUs the arriving work keeps busy, on average."""
        self._decay(now)
        return self._seconds / self.tau_s

    def reserve(self, now: float, serving: int) -> int:
        """GPUs a gang must leave free for arrivals: what they need beyond the GPUs serving single jobs now."""
        # Rounded, not ceiled: a trickle of work (0.3 GPUs on average) must not keep a two-GPU node from spreading.
        return max(0, math.floor(self.gpus(now) - serving + 0.5))


def choose_gpus(job: GangCandidate, free_sizes: Sequence[int], idle_gpus: int, waiting: int,
                policy: GangPolicy, reserve: int = 0) -> int:
    """How many GPUs `job` takes now: 1, or a gang size that is free (`free_sizes`: sizes of gangs whose GPUs are
    all idle). `waiting` counts the other queued jobs that could start now; `idle_gpus` the idle GPUs; `reserve`
    the GPUs arriving work will want meanwhile (OfferedLoad.reserve): a gang leaves them free."""
    spare = idle_gpus - waiting - reserve
    if spare < 2 or job.seconds_one < policy.min_job_s:
        return 1
    solo_s = job.seconds_one + (0.0 if job.weights_resident else job.load_s)
    best, best_s = 1, solo_s
    for k in sorted(set(free_sizes)):
        if k > spare or k > policy.cap(job.model_id) or k not in job.plans:
            continue
        gain = job.speedup(k)
        if gain / k < policy.min_efficiency:
            continue
        load = (job.gang_load_s or {}).get(k, job.load_s)
        seconds = job.seconds_one / gain + load
        if seconds < best_s:
            best, best_s = k, seconds
    return best
