"""Two nodes of one 80 GB GPU each: darkroom's cluster-wide routing against two independent nodes.

Replays the scheduler simulator's studio traces (benchmarks/scheduler_sim.py: same costs, same fake devices,
darkroom's real policy code) on 2 nodes x 1x80GB, each node with its own host RAM for parked models:

- routed: one queue for the cluster; each idle GPU plans with darkroom's policy and leaves a model to an idle
  peer that can start it sooner (server/engine/policy.py `routed_elsewhere`, the rule the engine uses);
- shared_unrouted: one queue, darkroom's policy per GPU, no routing rule (isolates what the rule adds);
- independent_random: two independent darkroom servers behind a load balancer that assigns each request to a
  node at random (what two single-machine installs give).

    python -m benchmarks.cluster_sim     # table + benchmarks/results/sim/cluster_sim.json
"""

from __future__ import annotations

import argparse
import json
import random

from benchmarks.scheduler_sim import (
    HOST_RAM_GB_PER_GPU,
    RESULTS,
    ROOT,
    STUDIO_MIX,
    Job,
    Outcome,
    SimDevice,
    Simulation,
    load_costs,
    offered_per_h,
    poisson_trace,
)
from server.engine.costs import FamilyCost
from server.engine.policy import GB, DeviceState, Transfer, routed_elsewhere

NODES = 2
GPU_GB = 80
POLICIES = ("routed", "shared_unrouted", "independent_random")


class ClusterSimulation(Simulation):
    """`Simulation` on several nodes, one GPU and one host-RAM pool each."""

    def __init__(self, jobs: list[Job], fams: dict[str, FamilyCost], transfer: Transfer, policy: str,
                 seed: int = 7) -> None:
        super().__init__(jobs, NODES, GPU_GB, fams, transfer, "darkroom")
        self.cluster_policy = policy
        self.node_ram: list[set[str]] = [set() for _ in range(NODES)]
        self.node_ram_free = [int(HOST_RAM_GB_PER_GPU * GB)] * NODES
        self.node_of = {d.name: i for i, d in enumerate(self.devices)}
        self.rng = random.Random(seed)

    def state(self, dev: SimDevice) -> DeviceState:
        n = self.node_of[dev.name]
        return DeviceState(dev.name, dev.budget, tuple(sorted(dev.gpu.values(), key=lambda r: r.last_used)),
                           frozenset(self.node_ram[n]), self.node_ram_free[n])

    def execute(self, batch: list[Job], dev: SimDevice, now: float, demand: dict[str, int]) -> None:
        # The base class parks models in `self.ram`: point it at this GPU's node for the call.
        n = self.node_of[dev.name]
        self.ram, self.ram_free = self.node_ram[n], self.node_ram_free[n]
        super().execute(batch, dev, now, demand)
        self.node_ram_free[n] = self.ram_free

    def run(self) -> Outcome:
        queues: list[list[Job]] = [[] for _ in range(NODES)] if self.cluster_policy == "independent_random" else [[]]
        arrivals = list(self.jobs)
        now = 0.0
        while arrivals or any(queues):
            while arrivals and arrivals[0].arrival <= now:
                job = arrivals.pop(0)
                queues[self.rng.randrange(NODES) if len(queues) > 1 else 0].append(job)
            idle = [d for d in self.devices if d.free_at <= now]
            started = False
            for dev in idle:
                queue = queues[self.node_of[dev.name]] if len(queues) > 1 else queues[0]
                if not queue or dev.free_at > now:
                    continue
                candidates = queue
                if self.cluster_policy == "routed":
                    peers = [self.state(p) for p in idle if p is not dev and p.free_at <= now]
                    me = self.state(dev)
                    candidates = [j for j in queue if not routed_elsewhere(
                        j.model, self.footprint(j.model).bytes, me, peers, self.transfer)]
                if not candidates:
                    continue
                batch = self.darkroom_batch(candidates, dev, now)
                demand: dict[str, int] = {}
                for job in queue:
                    if job not in batch:
                        demand[job.model] = demand.get(job.model, 0) + 1
                self.execute(batch, dev, now, demand)
                for job in batch:
                    queue.remove(job)
                started = True
            if started:
                continue
            now = self.next_event(arrivals, now)
        return self.finished()


def run(n: int = 600) -> dict[str, dict[str, dict[str, float]]]:
    """{trace: {policy: summary}} on 2 x (1x80GB)."""
    fams, transfer = load_costs()
    traces = {f"studio_mix_{int(load * 100)}": poisson_trace(STUDIO_MIX, load, n, NODES, fams, seed=seed)
              for load, seed in ((0.5, 11), (0.9, 12), (1.2, 13))}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, jobs in traces.items():
        out[name] = {"offered_per_h": {"value": offered_per_h(jobs)}}
        for policy in POLICIES:
            out[name][policy] = ClusterSimulation(jobs, fams, transfer, policy).run().summary()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=600, help="jobs per trace")
    args = parser.parse_args(argv)
    results = run(args.jobs)
    cols = ["throughput_per_h", "p50_s", "p95_s", "loads", "gb_moved", "idle_share"]
    for trace, by_policy in results.items():
        print(f"\n{trace} on {NODES} nodes x 1x{GPU_GB}GB (offered {by_policy['offered_per_h']['value']}/h)")
        print(f"  {'policy':20}" + "".join(f"{c:>18}" for c in cols))
        for policy in POLICIES:
            print(f"  {policy:20}" + "".join(f"{by_policy[policy][c]:>18}" for c in cols))
    mix = results["studio_mix_90"]
    head = {"loads_routed_vs_random": round(mix["routed"]["loads"] / max(1, mix["independent_random"]["loads"]), 3),
            "p95_routed_s": mix["routed"]["p95_s"], "p95_random_s": mix["independent_random"]["p95_s"]}
    print("\nstudio_mix_90: " + ", ".join(f"{k} {v}" for k, v in head.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "cluster_sim.json"
    path.write_text(json.dumps({"command": "python -m benchmarks.cluster_sim", "nodes": f"{NODES} x 1x{GPU_GB}GB",
                                "costs": "configs/costs.toml (uncalibrated; see its header)", "headline": head,
                                "results": results}, indent=1))
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
