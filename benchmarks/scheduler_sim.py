"""Replay request traces through darkroom's scheduler and residency policy against fake devices.

The fake device has a capacity in bytes, load seconds per GB from host RAM and
from disk, and run seconds per family from configs/costs.toml (uncalibrated
until a GPU run replaces them). darkroom's policy is the real code in
server/engine/policy.py (`pick_batch` + `plan_residency`); two baselines show
what the field does today:

- single_resident_fifo: one model on the GPU, jobs in arrival order, one at a
  time; a different model evicts it and loads from disk (A1111, ComfyUI when
  memory is short).
- lru_count: jobs in arrival order, one at a time, up to 3 models kept by count
  with LRU eviction and loads from disk (Ray Serve model multiplexing); byte
  overflows evict LRU too, which is kinder than the real thing (it would OOM).

Every policy gets the same offload fallback (a model larger than the device
runs with model or group offload at the same slowdown), so the comparison is
about residency and batching only.

    python -m benchmarks.scheduler_sim            # table + benchmarks/results/sim/scheduler_sim.json
    python -m benchmarks.scheduler_sim --json     # one JSON object on stdout
    python -m benchmarks.scheduler_sim --device rtx4090   # every id's weight variant and placement on one card,
                                                          # and the studio mix there vs bf16 with offload only
    python -m benchmarks.scheduler_sim --node 8xH100      # gangs (one job over k idle GPUs) vs one job per GPU
                                                          # on video- and image-heavy mixes (benchmarks/gang_sim.py)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from server.config import DarkroomConfig
from server.engine.costs import FamilyCost
from server.engine.policy import (
    EVICTION_ORDERS,
    GB,
    BatchConfig,
    DeviceState,
    ModelFootprint,
    NeverFits,
    Placement,
    QueuedItem,
    Resident,
    Transfer,
    largest_batch,
    pick_batch,
    plan_residency,
)
from server.engine.variant_plan import CardProfile, placement_seconds
from server.engine.variant_setup import card_table, full_size_options, plan_weights

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sim"

DEVICES = {"1x80GB": (1, 80), "1x141GB": (1, 141), "2x80GB": (2, 80), "1x24GB": (1, 24)}
RESERVE_GB = 2.0
HOST_RAM_GB_PER_GPU = 160.0
# Offloaded runs are slower: model offload copies each component once per call, group offload streams blocks
# with prefetch (overlapped, but not free).
OFFLOAD_SLOWDOWN = {Placement.RESIDENT: 1.0, Placement.MODEL_OFFLOAD: 1.15, Placement.GROUP_OFFLOAD: 1.6}


def load_costs() -> tuple[dict[str, FamilyCost], Transfer]:
    """Families' costs and the transfer rates, from configs/costs.toml (the file the server reads too)."""
    costs = DarkroomConfig.packaged().costs
    return costs.families, costs.transfer


@dataclass(frozen=True)
class Job:
    """One request of a trace."""

    id: str
    model: str
    batch_key: str
    arrival: float


# ---- traces -------------------------------------------------------------------------------------

# The studio mix: Kontext edits, SDXL variations, FLUX.2 klein, a video now and then. Two size buckets each.
STUDIO_MIX = {"flux-kontext": 0.35, "sdxl": 0.30, "flux2-klein": 0.30, "wan2.2-ti2v-5b": 0.05}
SIZES = ("1024x1024", "1344x768")


def mean_job_seconds(mix: dict[str, float], fams: dict[str, FamilyCost]) -> float:
    """Expected service seconds of one job of the mix (batch 1, no loads): what 'capacity' is measured in."""
    return sum(w * fams[m].job_s for m, w in mix.items())


def poisson_trace(mix: dict[str, float], load: float, n: int, devices: int, fams: dict[str, FamilyCost],
                  seed: int) -> list[Job]:
    """n jobs arriving as a Poisson process at `load` x the devices' capacity."""
    rng = random.Random(seed)
    rate = load * devices / mean_job_seconds(mix, fams)
    t, jobs = 0.0, []
    models, weights = list(mix), list(mix.values())
    for i in range(n):
        t += rng.expovariate(rate)
        model = rng.choices(models, weights)[0]
        jobs.append(Job(f"j{i}", model, rng.choice(SIZES), t))
    return jobs


def offered_per_h(jobs: list[Job]) -> float:
    """Jobs per hour the trace brings: the ceiling on any policy's throughput over a trace that it keeps up with."""
    span = jobs[-1].arrival - jobs[0].arrival
    return round(len(jobs) / span * 3600, 1) if span > 0 else float("inf")


def burst_trace(mix: dict[str, float], n: int, seed: int) -> list[Job]:
    """n jobs of the mix arriving within 10 seconds."""
    rng = random.Random(seed)
    models, weights = list(mix), list(mix.values())
    return sorted((Job(f"b{i}", rng.choices(models, weights)[0], rng.choice(SIZES), rng.uniform(0, 10))
                   for i in range(n)), key=lambda j: j.arrival)


# ---- the simulated devices ------------------------------------------------------------------------


@dataclass
class SimDevice:
    """A fake GPU: capacity, what is on it, when it is free."""

    name: str
    budget: int
    gpu: dict[str, Resident] = field(default_factory=dict)
    free_at: float = 0.0
    busy_s: float = 0.0


@dataclass
class Outcome:
    """What a policy run produced."""

    latencies: list[float] = field(default_factory=list)
    loads: int = 0
    bytes_moved: int = 0
    busy_s: float = 0.0
    makespan: float = 0.0
    devices: int = 1

    def summary(self) -> dict[str, float]:
        """The reported figures."""
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, max(0, math.ceil(p / 100 * len(lat)) - 1))]

        return {
            "throughput_per_h": round(len(lat) / self.makespan * 3600, 1),
            "p50_s": round(pct(50), 2),
            "p95_s": round(pct(95), 2),
            "loads": self.loads,
            "gb_moved": round(self.bytes_moved / GB, 1),
            "idle_share": round(1 - self.busy_s / (self.makespan * self.devices), 3),
        }


Chooser = Callable[[list[Job], SimDevice, float, "Simulation"], tuple[list[Job], str]]


class Simulation:
    """Discrete-event replay of one trace on one device set under one policy."""

    def __init__(self, jobs: list[Job], n_devices: int, gb: float, fams: dict[str, FamilyCost], transfer: Transfer,
                 policy: str, placed_seconds: bool = False) -> None:
        self.placed_seconds = placed_seconds
        """The families' seconds already include their planned placement's cost (a card's variant plans)."""
        self.jobs = jobs
        self.fams = fams
        self.transfer = transfer
        self.policy = policy
        self.devices = [SimDevice(f"gpu{i}", int((gb - RESERVE_GB) * GB)) for i in range(n_devices)]
        self.ram: set[str] = set()
        self.ram_free = int(HOST_RAM_GB_PER_GPU * n_devices * GB)
        self.out = Outcome(devices=n_devices)
        self.batch = BatchConfig(max_batch=4)

    def footprint(self, model: str) -> ModelFootprint:
        return ModelFootprint(model, self.fams[model].components)

    def state(self, dev: SimDevice) -> DeviceState:
        return DeviceState(dev.name, dev.budget, tuple(sorted(dev.gpu.values(), key=lambda r: r.last_used)),
                           frozenset(self.ram), self.ram_free)

    def run(self) -> Outcome:
        pending: list[Job] = []
        arrivals = list(self.jobs)
        now = 0.0
        while arrivals or pending:
            while arrivals and arrivals[0].arrival <= now:
                job = arrivals.pop(0)
                pending.append(job)
                self.arrived(job)
            idle = [d for d in self.devices if d.free_at <= now]
            if pending and idle:
                if self.spread(pending, idle, now):
                    continue
                for dev in idle:
                    if not pending:
                        break
                    batch = self.choose(pending, dev, now)
                    for job in batch:
                        pending.remove(job)
                continue
            now = self.next_event(arrivals, now)
        return self.finished()

    def arrived(self, job: Job) -> None:
        """A job entered the queue (a subclass may count it)."""

    def spread(self, pending: list[Job], idle: list[SimDevice], now: float) -> bool:
        """Start a job over several idle devices (True) before each idle device picks alone; none here."""
        return False

    def next_event(self, arrivals: list[Job], now: float) -> float:
        """The clock's next stop: a device coming free or the next arrival."""
        nxt = [d.free_at for d in self.devices if d.free_at > now]
        if arrivals:
            nxt.append(arrivals[0].arrival)
        return min(nxt)

    def finished(self) -> Outcome:
        """The outcome once every job ran: makespan and busy seconds added."""
        self.out.makespan = max(d.free_at for d in self.devices) - self.jobs[0].arrival
        self.out.busy_s = sum(d.busy_s for d in self.devices)
        return self.out

    # ---- policies ----
    def choose(self, pending: list[Job], dev: SimDevice, now: float) -> list[Job]:
        if self.policy in ("single_resident_fifo", "lru_count"):
            batch = [min(pending, key=lambda j: j.arrival)]
        else:
            batch = self.darkroom_batch(pending, dev, now)
        demand: dict[str, int] = {}
        for job in pending:
            if job not in batch:
                demand[job.model] = demand.get(job.model, 0) + 1
        self.execute(batch, dev, now, demand)
        return batch

    def darkroom_batch(self, pending: list[Job], dev: SimDevice, now: float) -> list[Job]:
        queue = [QueuedItem(j.id, j.model, j.batch_key, j.arrival) for j in pending]
        state = self.state(dev)

        def switch(model: str) -> float:
            return self.transfer.load_seconds(self.footprint(model).bytes, model in self.ram)

        def cap(model: str, _key: str) -> int:
            return largest_batch(self.footprint(model), self.fams[model].activation, dev.budget, self.batch.max_batch)

        choice = pick_batch(queue, state, now, self.batch, switch, cap)
        assert choice is not None
        by_id = {j.id: j for j in pending}
        return [by_id[i] for i in choice.job_ids]

    def execute(self, batch: list[Job], dev: SimDevice, now: float, demand: dict[str, int]) -> None:
        model = batch[0].model
        fam = self.fams[model]
        foot = self.footprint(model)
        activation = fam.activation * len(batch)
        load_s = 0.0
        if self.policy == "single_resident_fifo":
            placement = self.place_alone(foot, activation, dev)
            if model not in dev.gpu:
                self.out.bytes_moved += sum(r.bytes for r in dev.gpu.values())
                dev.gpu.clear()
                load_s = self.transfer.load_seconds(foot.bytes, from_ram=False)
                self.out.loads += 1
                self.out.bytes_moved += foot.bytes
                dev.gpu[model] = Resident(model, foot.bytes if placement is Placement.RESIDENT else 0, now)
        elif self.policy == "lru_count":
            placement = self.place_alone(foot, activation, dev)
            if model not in dev.gpu:
                need = foot.bytes if placement is Placement.RESIDENT else 0
                while dev.gpu and (len(dev.gpu) >= 3 or
                                   sum(r.bytes for r in dev.gpu.values()) + need + activation > dev.budget):
                    victim = min(dev.gpu.values(), key=lambda r: r.last_used)
                    self.out.bytes_moved += victim.bytes
                    del dev.gpu[victim.name]
                load_s = self.transfer.load_seconds(foot.bytes, from_ram=False)
                self.out.loads += 1
                self.out.bytes_moved += foot.bytes
                dev.gpu[model] = Resident(model, need, now)
        else:
            order = EVICTION_ORDERS[self.policy.removeprefix("darkroom_")] if self.policy != "darkroom" \
                else EVICTION_ORDERS[DEFAULT_ORDER]
            placement, load_s = self.make_resident(dev, foot, activation, demand, order, now)
        run_s = fam.batch_seconds(len(batch)) * (1.0 if self.placed_seconds else OFFLOAD_SLOWDOWN[placement])
        if model in dev.gpu:
            dev.gpu[model] = Resident(model, dev.gpu[model].bytes, now + load_s + run_s)
        start = max(now, dev.free_at)
        dev.free_at = start + load_s + run_s
        dev.busy_s += run_s
        for job in batch:
            self.out.latencies.append(dev.free_at - job.arrival)

    def make_resident(self, dev: SimDevice, foot: ModelFootprint, activation: int, demand: dict[str, int],
                      order: Any, now: float) -> tuple[Placement, float]:
        """Carry out darkroom's residency plan for `foot` on `dev`: the placement and the load seconds."""
        plan = plan_residency(self.state(dev), foot, activation, demand, order, self.transfer)
        for move in plan.moves:
            if move.action == "load":
                self.out.loads += 1
                self.out.bytes_moved += move.bytes
                if plan.placement is Placement.RESIDENT:
                    dev.gpu[move.model] = Resident(move.model, move.bytes, now)
                elif move.model not in self.ram:
                    self.ram.add(move.model)
                    self.ram_free -= move.bytes
            else:
                dev.gpu.pop(move.model, None)
                self.out.bytes_moved += move.bytes
                if move.action == "offload_to_ram" and move.model not in self.ram:
                    self.ram.add(move.model)
                    self.ram_free -= move.bytes
        return plan.placement, plan.load_s

    def place_alone(self, foot: ModelFootprint, activation: int, dev: SimDevice) -> Placement:
        """The baselines' placement: the same fallback ladder on an empty device."""
        try:
            return plan_residency(DeviceState(dev.name, dev.budget), foot, activation, {},
                                  EVICTION_ORDERS["lru"], self.transfer).placement
        except NeverFits:
            return Placement.GROUP_OFFLOAD


DEFAULT_ORDER = "cost_aware"
POLICIES = ["darkroom", "single_resident_fifo", "lru_count"]
VARIANTS = ["darkroom_lru", "darkroom_smallest_first", "darkroom_cost_aware"]


def traces(devices: int, fams: dict[str, FamilyCost], n: int) -> dict[str, list[Job]]:
    """The named traces for a device count."""
    return {
        "studio_mix_50": poisson_trace(STUDIO_MIX, 0.5, n, devices, fams, seed=1),
        "studio_mix_90": poisson_trace(STUDIO_MIX, 0.9, n, devices, fams, seed=2),
        "studio_mix_120": poisson_trace(STUDIO_MIX, 1.2, n, devices, fams, seed=3),
        "burst": burst_trace(STUDIO_MIX, 200, seed=4),
        "single_model_flood": poisson_trace({"flux-kontext": 1.0}, 1.2, n // 2, devices, fams, seed=5),
    }


def run_all(n: int = 600, policies: list[str] | None = None) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{trace: {device: {policy: summary}}}."""
    fams, transfer = load_costs()
    policies = policies or POLICIES
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for dev_name, (count, gb) in DEVICES.items():
        for trace_name, jobs in traces(count, fams, n).items():
            for policy in policies:
                result = Simulation(jobs, count, gb, fams, transfer, policy).run().summary()
                out.setdefault(trace_name, {}).setdefault(dev_name, {})[policy] = result
    return out


# Effective disk -> GPU rates the sensitivity sweep tries (GB/s): the anchors' naive diffusers load (~23 GB in about
# a minute; FLUX.2-klein 18 GB in 48 s), configs/costs.toml's estimate, an optimised loader (8.6 s / 23 GB), one
# Gen4 NVMe at line rate, GDS/RAID (../shared/reference/performance-anchors.md section 7).
SWEEP_DISK_GB_PER_S = (0.4, 0.7, 1.0, 1.5, 2.0, 2.7, 7.0, 26.0)


def sweep_disk(n: int = 600, trace: str = "studio_mix_90", device: str = "1x80GB",
               rates: tuple[float, ...] = SWEEP_DISK_GB_PER_S) -> list[dict[str, float]]:
    """How the headline comparison moves with the effective disk rate, the one cost the baselines pay most.

    The trace is the same for every rate (arrivals depend on run seconds only). `ceiling_vs_fifo` is the
    offered rate over FIFO's throughput: no policy can beat FIFO by more than that on a trace it keeps up with.
    """
    fams, transfer = load_costs()
    count, gb = DEVICES[device]
    jobs = traces(count, fams, n)[trace]
    offered = offered_per_h(jobs)
    rows = []
    for rate in rates:
        t = replace(transfer, disk_gb_per_s=rate)
        res = {p: Simulation(jobs, count, gb, fams, t, p).run().summary() for p in POLICIES}
        ours, fifo = res["darkroom"], res["single_resident_fifo"]
        rows.append({
            "disk_gb_per_s": rate,
            "offered_per_h": offered,
            "darkroom_per_h": ours["throughput_per_h"],
            "fifo_per_h": fifo["throughput_per_h"],
            "throughput_vs_fifo": round(ours["throughput_per_h"] / fifo["throughput_per_h"], 2),
            "ceiling_vs_fifo": round(offered / fifo["throughput_per_h"], 2),
            "loads_vs_fifo": round(ours["loads"] / max(1, fifo["loads"]), 3),
            "darkroom_p95_s": ours["p95_s"],
            "fifo_p95_s": fifo["p95_s"],
        })
    return rows


# ---- one card of configs/cards.toml: weight variants vs bf16 with offload --------------------------------------


def card_families(config: DarkroomConfig, card: CardProfile, bf16_only: bool) -> dict[str, FamilyCost]:
    """The studio mix's families as they run on `card`: the bytes of the variant the planner chooses (or bf16 with
    the offload the card forces, `bf16_only`) and the reference job's seconds with that variant and placement."""
    out = {}
    for family in STUDIO_MIX:
        weights = next(name for name, entry in config.manifest.items() if entry.family == family)
        options = [o for o in full_size_options(config, weights) if not bf16_only or o.variant == "bf16"]
        plan = plan_weights(config, weights, card, options, RESERVE_GB)
        assert plan.chosen is not None and plan.chosen.placement is not None, (family, card.name, plan.rows)
        option = next(o for o in options if o.variant == plan.chosen.variant)
        fam = config.costs.families[family]
        seconds = placement_seconds(card, plan.chosen.variant, plan.chosen.placement, fam.job_s, fam.ref_steps, option)
        out[family] = replace(fam, components=option.footprint.components, job_s=seconds)
    return out


def card_report(card_name: str, n: int) -> dict[str, object]:
    """Every id's plan on one card, and the studio mix there with variants vs bf16-with-offload only."""
    config = DarkroomConfig.packaged()
    card = config.cards[card_name]
    table = [row.describe() for row in card_table(config, card, RESERVE_GB)]
    planned, bf16 = card_families(config, card, False), card_families(config, card, True)
    jobs = poisson_trace(STUDIO_MIX, 0.9, n, 1, planned, seed=2)
    gb = card.memory_gb or 0.0
    mix = {"planned_variants": Simulation(jobs, 1, gb, planned, config.costs.transfer, "darkroom", True).run().summary(),
           "bf16_offload_only": Simulation(jobs, 1, gb, bf16, config.costs.transfer, "darkroom", True).run().summary()}
    ratio = round(mix["planned_variants"]["throughput_per_h"] / mix["bf16_offload_only"]["throughput_per_h"], 2)
    return {"card": card.label, "ids": table, "studio_mix_90": mix, "throughput_vs_offload_only": ratio,
            "every_id_runs": all(r["variant"] is not None for r in table),
            "offered_per_h": offered_per_h(jobs)}


def print_card_report(report: dict[str, Any]) -> None:
    """The per-id table and the mix comparison, as text."""
    print(f"every id on one {report['card']} (default request; estimated, uncalibrated speeds)")
    print(f"  {'id':26}{'variant':>14}{'placement':>20}{'peak GB':>9}{'est s':>9}  note")
    for row in report["ids"]:
        note = f"at {row['tier']} (default tier fits no variant)" if row["tier"] else (row["why_not"] or "")
        print(f"  {row['model']:26}{row['variant'] or '-':>14}{row['placement'] or '-':>20}"
              f"{row['peak_gb'] if row['peak_gb'] is not None else '-':>9}"
              f"{row['seconds'] if row['seconds'] is not None else '-':>9}  {note}")
    print(f"\nstudio_mix_90 on one {report['card']} (offered {report['offered_per_h']}/h)")
    for name, figures in report["studio_mix_90"].items():
        print(f"  {name:20} " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    print(f"  throughput with planned variants vs bf16 offload only: {report['throughput_vs_offload_only']}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    parser.add_argument("--jobs", type=int, default=600, help="jobs per Poisson trace")
    parser.add_argument("--variants", action="store_true", help="also compare darkroom's eviction orders")
    parser.add_argument("--device", help="one card of configs/cards.toml (rtx4090, rtx5090, rtx6000-ada, a6000, "
                        "h100, h200): every id's variant plan there and the studio mix vs bf16 offload only")
    parser.add_argument("--node", help="a multi-GPU node (8xH100, 4xH100, 8xL40S, 2xRTX6000): gangs vs one job per "
                        "GPU on video- and image-heavy mixes")
    args = parser.parse_args(argv)
    if args.node:
        from benchmarks.gang_sim import node_report, print_node_report

        node = node_report(args.node, min(args.jobs, 400))
        if args.json:
            json.dump(node, sys.stdout)
            print()
            return 0
        print_node_report(node)
        _write(f"gang_sim_{args.node}.json", {"command": f"python -m benchmarks.scheduler_sim --node {args.node}",
                                              **node})
        return 0
    if args.device:
        report = card_report(args.device, args.jobs)
        if args.json:
            json.dump(report, sys.stdout)
            print()
            return 0
        print_card_report(report)
        _write(f"scheduler_sim_{args.device}.json", {
            "command": f"python -m benchmarks.scheduler_sim --device {args.device}",
            "costs": "configs/costs.toml and configs/cards.toml (uncalibrated)", **report})
        return 0
    results = run_all(args.jobs, POLICIES + (VARIANTS if args.variants else []))
    if args.json:
        json.dump(results, sys.stdout)
        print()
        return 0
    fams, _ = load_costs()
    offered = {dev: {name: offered_per_h(jobs) for name, jobs in traces(count, fams, args.jobs).items()}
               for dev, (count, _gb) in DEVICES.items()}
    cols = ["throughput_per_h", "p50_s", "p95_s", "loads", "gb_moved", "idle_share"]
    for trace_name, by_dev in results.items():
        for dev_name, by_policy in by_dev.items():
            print(f"\n{trace_name} on {dev_name} (offered {offered[dev_name][trace_name]}/h)")
            print(f"  {'policy':26}" + "".join(f"{c:>18}" for c in cols))
            for policy, figures in by_policy.items():
                print(f"  {policy:26}" + "".join(f"{figures[c]:>18}" for c in cols))
    target = headline(results)
    print("\ntarget (studio_mix_90 on 1x80GB vs single_resident_fifo): "
          + ", ".join(f"{k} {v}" for k, v in target.items()))
    sweep = sweep_disk(args.jobs)
    print("\nsensitivity to the effective disk rate (studio_mix_90 on 1x80GB)")
    print("  " + "".join(f"{k:>20}" for k in sweep[0]))
    for row in sweep:
        print("  " + "".join(f"{v:>20}" for v in row.values()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "scheduler_sim.json"
    path.write_text(json.dumps({"command": "python -m benchmarks.scheduler_sim" + (" --variants" if args.variants
                                                                                 else ""),
                                "costs": "configs/costs.toml (uncalibrated; see its header)",
                                "default_eviction_order": DEFAULT_ORDER, "offered_per_h": offered,
                                "target": target, "disk_rate_sensitivity": sweep, "results": results}, indent=1))
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0


def _write(name: str, payload: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {path.relative_to(ROOT)}")


def headline(results: dict[str, dict[str, dict[str, dict[str, float]]]]) -> dict[str, float | bool]:
    """The issue's target: >= 2x FIFO's throughput, <= 1/5 its loads, p95 no worse, on studio_mix_90 / 1x80GB."""
    by_policy = results["studio_mix_90"]["1x80GB"]
    ours, fifo = by_policy["darkroom"], by_policy["single_resident_fifo"]
    throughput = round(ours["throughput_per_h"] / fifo["throughput_per_h"], 2)
    loads = round(ours["loads"] / max(1, fifo["loads"]), 3)
    return {"throughput_vs_fifo": throughput, "throughput_met": throughput >= 2.0,
            "loads_vs_fifo": loads, "loads_met": loads <= 0.2,
            "p95_met": ours["p95_s"] <= fifo["p95_s"]}


if __name__ == "__main__":
    raise SystemExit(main())
