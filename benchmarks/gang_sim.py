"""One node of several GPUs: gangs (a job spread over k idle GPUs, server/engine/gangs.py's rule) against one job per
GPU, on a video-heavy and an image-heavy studio mix at several loads. Same residency and batching policy
(server/engine/policy.py) on both sides; the gang side adds only the gang rule, with the speed-ups of
configs/parallel.toml (published anchors, not yet measured here) and a gang's load paid on each of its GPUs.

    python -m benchmarks.scheduler_sim --node 8xH100     # table + benchmarks/results/sim/gang_sim_8xH100.json
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from benchmarks.scheduler_sim import DEFAULT_ORDER, OFFLOAD_SLOWDOWN, Job, SimDevice, Simulation, poisson_trace
from server.config import DarkroomConfig
from server.engine.costs import FamilyCost
from server.engine.gangs import (
    GANG_SIZES,
    GangCandidate,
    GangPolicy,
    OfferedLoad,
    ParallelSpec,
    choose_gpus,
    plan_for,
)
from server.engine.policy import (
    EVICTION_ORDERS,
    DeviceState,
    NeverFits,
    Placement,
    Resident,
    Transfer,
    plan_residency,
)

NODES = {"8xH100": (8, 80), "4xH100": (4, 80), "8xL40S": (8, 48), "2xRTX6000": (2, 48)}

MIXES = {
    # A studio animating: Wan and LTX clips most of the time, stills between.
    "video_heavy": {"wan2.2-i2v-a14b": 0.25, "wan2.2-ti2v-5b": 0.25, "ltx2": 0.15, "flux-kontext": 0.2,
                    "flux2-klein": 0.15},
    # The scheduler simulator's studio mix: edits and variations, a clip now and then.
    "image_heavy": {"flux-kontext": 0.35, "sdxl": 0.30, "flux2-klein": 0.30, "wan2.2-ti2v-5b": 0.05},
}
LOADS = (0.2, 0.5, 0.8)


@dataclass(frozen=True)
class _Gang:
    size: int
    devices: tuple[SimDevice, ...]


class GangSimulation(Simulation):
    """The darkroom policy on n devices, with (`gangs`) or without gangs."""

    def __init__(self, jobs: list[Job], n: int, gb: float, fams: dict[str, FamilyCost], transfer: Transfer,
                 specs: dict[str, ParallelSpec], gangs: bool, policy: GangPolicy | None = None) -> None:
        super().__init__(jobs, n, gb, fams, transfer, "darkroom")
        self.specs = specs
        self.gangs = gangs
        self.policy = "darkroom"
        self.gang_policy = policy or GangPolicy()
        self.groups = [_Gang(k, tuple(self.devices[s:s + k])) for k in GANG_SIZES if k <= n
                       for s in range(0, n - k + 1, k)]
        self.spread_jobs: dict[int, int] = {}
        self.offered = OfferedLoad()
        self.in_gang: dict[str, float] = {}
        """Device name -> when the gang holding it ends."""
        self.by_model: dict[str, list[float]] = {}
        """Each job's latency by model (what the mix's percentiles hide: whose jobs got faster or slower)."""

    def execute(self, batch: list[Job], dev: SimDevice, now: float, demand: dict[str, int]) -> None:
        before = len(self.out.latencies)
        super().execute(batch, dev, now, demand)
        for job, latency in zip(batch, self.out.latencies[before:], strict=True):
            self.by_model.setdefault(job.model, []).append(latency)

    def per_model(self) -> dict[str, dict[str, float]]:
        """p50 and p95 latency per model."""
        out = {}
        for model, lat in sorted(self.by_model.items()):
            lat = sorted(lat)
            out[model] = {"jobs": len(lat), "p50_s": round(lat[(len(lat) - 1) // 2], 2),
                          "p95_s": round(lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)], 2)}
        return out

    def arrived(self, job: Job) -> None:
        self.offered.arrived(job.arrival, self.fams[job.model].job_s)

    def spread(self, pending: list[Job], idle: list[SimDevice], now: float) -> bool:
        """Start the first pending job the gang rule spreads (True), or none (False)."""
        if not self.gangs:
            return False
        # A running gang serves one job of the arriving work, like a busy single GPU.
        serving = sum(1 for d in self.devices if d.free_at > now and self.in_gang.get(d.name, 0.0) <= now) + \
            len({end for end in self.in_gang.values() if end > now})
        if len(pending) >= len(idle):
            return False
        idle_set = {d.name for d in idle}
        for index, job in enumerate(sorted(pending, key=lambda j: j.arrival)):
            spec = self.specs.get(job.model)
            free = [g for g in self.groups if {d.name for d in g.devices} <= idle_set]
            if spec is None or not free:
                continue
            fam = self.fams[job.model]
            if self._placement(fam, job.model) is Placement.GROUP_OFFLOAD:
                continue  # each rank holds the whole model (model offload at most: the experts take turns)
            nbytes = sum(fam.components)
            plans = {g.size: plan for g in free if (plan := plan_for(spec, g.size, True, 1 << 20, True)) is not None}

            def load(group: _Gang, model: str = job.model, nbytes: int = nbytes) -> float:
                if all(model in d.gpu for d in group.devices):
                    return 0.0
                return self.transfer.load_seconds(nbytes, from_ram=model in self.ram)

            gang_load = {k: min(load(g) for g in free if g.size == k) for k in plans}
            resident = any(job.model in d.gpu for d in idle)
            candidate = GangCandidate(job.id, job.model, fam.job_s, plans, spec.speedup_at, weights_resident=resident,
                                      load_s=self.transfer.load_seconds(nbytes, from_ram=job.model in self.ram),
                                      gang_load_s=gang_load)
            waiting = len(pending) - index - 1
            k = choose_gpus(candidate, list(plans), len(idle), waiting, self.gang_policy,
                            self.offered.reserve(now, serving))
            if k == 1:
                continue
            group = min((g for g in free if g.size == k), key=load)
            self.run_gang(job, group, spec, now)
            pending.remove(job)
            return True
        return False

    def _placement(self, fam: FamilyCost, model: str) -> Placement:
        try:
            empty = DeviceState(self.devices[0].name, self.devices[0].budget)
            return plan_residency(empty, self.footprint(model), fam.activation, {}, EVICTION_ORDERS["lru"],
                                  self.transfer).placement
        except NeverFits:
            return Placement.GROUP_OFFLOAD

    def run_gang(self, job: Job, group: _Gang, spec: ParallelSpec, now: float) -> None:
        """The job on every device of `group`: each loads the model as the residency policy says, then they run
        together at the family's speed-up for k."""
        fam = self.fams[job.model]
        foot = self.footprint(job.model)
        load_s = 0.0
        for dev in group.devices:
            _placement, seconds = self.make_resident(dev, foot, fam.activation, {}, EVICTION_ORDERS[DEFAULT_ORDER],
                                                     now)
            load_s = max(load_s, seconds)
        run_s = fam.job_s / spec.speedup_at(group.size) * OFFLOAD_SLOWDOWN[self._placement(fam, job.model)]
        end = now + load_s + run_s
        for dev in group.devices:
            dev.free_at = end
            dev.busy_s += run_s
            self.in_gang[dev.name] = end
            if job.model in dev.gpu:
                dev.gpu[job.model] = Resident(job.model, dev.gpu[job.model].bytes, end)
        self.out.latencies.append(end - job.arrival)
        self.by_model.setdefault(job.model, []).append(end - job.arrival)
        self.spread_jobs[group.size] = self.spread_jobs.get(group.size, 0) + 1


def node_report(node: str, n_jobs: int = 400) -> dict[str, Any]:
    """Both mixes at each load on `node`: one job per GPU vs gangs."""
    config = DarkroomConfig.packaged()
    count, gb = NODES[node]
    fams, transfer, specs = config.costs.families, config.costs.transfer, dict(config.parallel)
    out: dict[str, Any] = {}
    for mix_name, mix in MIXES.items():
        for load in LOADS:
            jobs = poisson_trace(mix, load, n_jobs, count, fams, seed=int(load * 100) + len(mix_name))
            solo = GangSimulation(jobs, count, gb, fams, transfer, specs, gangs=False)
            gang = GangSimulation(jobs, count, gb, fams, transfer, specs, gangs=True)
            a, b = solo.run().summary(), gang.run().summary()
            out[f"{mix_name}@{load}"] = {
                "one_job_per_gpu": a | {"by_model": solo.per_model()},
                "gangs": b | {"spread_jobs": {str(k): v for k, v in sorted(gang.spread_jobs.items())},
                              "by_model": gang.per_model()},
                "p95_ratio": round(b["p95_s"] / a["p95_s"], 3) if a["p95_s"] else math.nan,
                "p50_ratio": round(b["p50_s"] / a["p50_s"], 3) if a["p50_s"] else math.nan,
                "throughput_ratio": round(b["throughput_per_h"] / a["throughput_per_h"], 3)}
    return {"node": node, "gpus": count, "gpu_gb": gb, "jobs_per_trace": n_jobs, "mixes": MIXES,
            "speedups": {name: dict(spec.speedup) for name, spec in specs.items()},
            "speedups_basis": "configs/parallel.toml: published anchors (xDiT, cache-dit, SGLang, LightX2V), not "
                              "measured here", "results": out}


def print_node_report(report: dict[str, Any]) -> None:
    """The comparison as text."""
    print(f"{report['node']}: one job per GPU vs gangs ({report['jobs_per_trace']} jobs per trace; speed-ups from "
          "configs/parallel.toml, published anchors)")
    cols = ["throughput_per_h", "p50_s", "p95_s", "idle_share"]
    for name, row in report["results"].items():
        print(f"\n{name}  (p50 x{row['p50_ratio']}, p95 x{row['p95_ratio']}, throughput x{row['throughput_ratio']};"
              f" spread: {row['gangs']['spread_jobs']})")
        print("  " + f"{'policy':18}" + "".join(f"{c:>18}" for c in cols))
        for policy in ("one_job_per_gpu", "gangs"):
            print("  " + f"{policy:18}" + "".join(f"{row[policy][c]:>18}" for c in cols))
        print("  p50 / p95 by model: " + "; ".join(
            f"{m} {row['one_job_per_gpu']['by_model'][m]['p50_s']}/{row['one_job_per_gpu']['by_model'][m]['p95_s']}"
            f" -> {g['p50_s']}/{g['p95_s']}" for m, g in row["gangs"]["by_model"].items()))
