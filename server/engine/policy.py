"""VRAM-aware residency and batch choice: bytes and seconds in, decisions out. No torch, no I/O, no clock.

Two questions, answered by pure functions so that the engine and the simulator
(benchmarks/scheduler_sim.py) run exactly the same code:

1. *Which batch does an idle device run next?* (`pick_batch`). Jobs group by
   (model, batch key). A group's score is the age of its oldest job (plus a
   priority bonus) minus the load it would cost, spread over the jobs that
   share it: resident models win while their queue is fresh, another model
   wins once its jobs have waited longer than its amortised load (aging, so
   nothing starves), and a model with many queued jobs pays its load sooner.

2. *What must move so that batch fits?* (`plan_residency`). Models are in one
   of three places: on disk, in pinned host RAM (fast to bring back), on the
   GPU. An eviction policy orders the victims; each victim goes to RAM when
   the RAM budget holds it, else back to disk. When a model cannot fit even on
   an empty device, the plan falls back to model CPU offload (one component on
   the GPU at a time), then group offload (a few blocks at a time, with
   prefetch on a CUDA stream), and says so; if not even that fits, the caller
   refuses the request with the GB it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

GB = 1_000_000_000


class Placement(StrEnum):
    """How a model's weights sit while it runs."""

    RESIDENT = "resident"  # every component on the GPU
    MODEL_OFFLOAD = "model_cpu_offload"  # components move to the GPU one at a time
    GROUP_OFFLOAD = "group_offload"  # blocks stream through the GPU, prefetched on a side stream


@dataclass(frozen=True)
class ModelFootprint:
    """A model's weight bytes per component at the serving dtype (from safetensors headers)."""

    name: str
    components: tuple[int, ...]

    @property
    def bytes(self) -> int:
        """All weights."""
        return sum(self.components)

    @property
    def largest(self) -> int:
        """The biggest component (what model CPU offload must hold at once)."""
        return max(self.components, default=0)


@dataclass(frozen=True)
class Transfer:
    """Seconds to bring weights onto the GPU: from disk (read + init) or from pinned host RAM (PCIe copy)."""

    disk_gb_per_s: float = 2.0
    ram_gb_per_s: float = 20.0
    fixed_s: float = 0.5

    def load_seconds(self, nbytes: int, from_ram: bool) -> float:
        """Load time of `nbytes` from RAM or disk."""
        rate = self.ram_gb_per_s if from_ram else self.disk_gb_per_s
        return self.fixed_s + nbytes / GB / rate


@dataclass(frozen=True)
class Resident:
    """A model on the GPU: its bytes and when it was last used (the caller's clock)."""

    name: str
    bytes: int
    last_used: float = 0.0


@dataclass(frozen=True)
class DeviceState:
    """One device as the policy sees it."""

    name: str
    budget: int | None
    """Bytes weights and activations may use (total less the reserve); None = unmanaged (CPU)."""
    gpu: tuple[Resident, ...] = ()
    ram: frozenset[str] = frozenset()
    """Models held in pinned host RAM (shared by the host's devices)."""
    ram_free: int = 0

    def resident(self, model: str) -> bool:
        """Whether `model` is on this device."""
        return any(r.name == model for r in self.gpu)

    @property
    def used(self) -> int:
        """Bytes of weights on the device."""
        return sum(r.bytes for r in self.gpu)


# ---- eviction order --------------------------------------------------------------------------------

EvictionOrder = Callable[[Sequence[Resident], Mapping[str, int], Transfer, frozenset[str]], list[Resident]]
"""(residents, queued jobs per model, transfer, models in RAM) -> residents, first to evict first."""


def lru(residents: Sequence[Resident], demand: Mapping[str, int], transfer: Transfer,
        ram: frozenset[str]) -> list[Resident]:
    """Least recently used first."""
    return sorted(residents, key=lambda r: r.last_used)


def smallest_first(residents: Sequence[Resident], demand: Mapping[str, int], transfer: Transfer,
                   ram: frozenset[str]) -> list[Resident]:
    """Smallest first: cheapest to bring back, but may need several evictions."""
    return sorted(residents, key=lambda r: (r.bytes, r.last_used))


def cost_aware(residents: Sequence[Resident], demand: Mapping[str, int], transfer: Transfer,
               ram: frozenset[str]) -> list[Resident]:
    """Cheapest expected reload first: models nobody is queued for go first (least recently used first,
    recency being the best guess of reuse), then those with queued work by reload seconds x queued jobs.

    A model with queued work will certainly be loaded again; one without is only
    likely to be, and the longer ago it was used the less likely.
    """

    def cost(r: Resident) -> tuple[float, float]:
        waiting = demand.get(r.name, 0)
        if waiting == 0:
            return (0.0, r.last_used)
        return (transfer.load_seconds(r.bytes, from_ram=True) * waiting, r.last_used)

    return sorted(residents, key=cost)


EVICTION_ORDERS: dict[str, EvictionOrder] = {"lru": lru, "smallest_first": smallest_first, "cost_aware": cost_aware}


# ---- residency plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """One residency action."""

    model: str
    action: str  # "load" | "offload_to_ram" | "evict_to_disk"
    bytes: int
    from_ram: bool = False


@dataclass(frozen=True)
class ResidencyPlan:
    """What to move before running `model`, how it will sit, and what that costs."""

    model: str
    placement: Placement
    moves: tuple[Move, ...]
    load_s: float
    peak_bytes: int
    """Estimated device peak while running: resident weights + activations (or the offload working set)."""


class NeverFits(Exception):
    """Not even group offload on an empty device holds this job."""

    def __init__(self, need: int, have: int) -> None:
        super().__init__(f"needs {need / GB:.1f} GB, the largest device budget is {have / GB:.1f} GB")
        self.need = need
        self.have = have


# Group offload keeps about this share of the largest component on the GPU (a block being computed plus one
# being prefetched); diffusers' block-level groups of one block are 1/20-1/60 of a DiT.
GROUP_OFFLOAD_SHARE = 0.1


def offload_need(model: ModelFootprint, activation_bytes: int) -> dict[Placement, int]:
    """Device bytes each placement needs for `model` with `activation_bytes` of activations."""
    return {
        Placement.RESIDENT: model.bytes + activation_bytes,
        Placement.MODEL_OFFLOAD: model.largest + activation_bytes,
        Placement.GROUP_OFFLOAD: int(model.largest * GROUP_OFFLOAD_SHARE) + activation_bytes,
    }


def most_that_fit(room: int | None, need: Callable[[int], int], most: int) -> int:
    """The one answer to "how many fit": the largest n in 1..most whose `need(n)` bytes fit in `room` (None:
    unmanaged, all fit). Never below one: a single item that does not fit is the offload ladder's business."""
    if room is None:
        return most
    lo, hi = 1, max(1, most)
    while lo < hi:  # need(n) grows with n: binary search
        mid = (lo + hi + 1) // 2
        if need(mid) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


def largest_batch(model: ModelFootprint, activation_per_job: int, budget: int | None, cap: int) -> int:
    """The most jobs (<= cap, >= 1) whose activations fit beside the model's weights on an empty device."""
    room = None if budget is None else budget - model.bytes
    return most_that_fit(room, lambda n: n * activation_per_job, cap)


def images_per_call(room: int | None, activation_of: Callable[[int], int], num_images: int) -> int:
    """How many of a request's images one pipeline call may make with `room` bytes beside the loaded weights
    (`activation_of(n)`: the family's estimate for n images)."""
    return most_that_fit(room, activation_of, num_images)


def split_after_oom(n: int) -> tuple[int, int]:
    """How a merged call that ran out of memory is retried: in two halves (the estimate was wrong, so the
    next guess halves the work rather than trusting the formula again)."""
    return n // 2, n - n // 2


def plan_residency(device: DeviceState, model: ModelFootprint, activation_bytes: int, demand: Mapping[str, int],
                   order: EvictionOrder, transfer: Transfer) -> ResidencyPlan:
    """Make room for `model` on `device` (evicting in `order`), or pick an offload placement.

    Raises NeverFits when even group offload on an empty device does not fit.
    """
    resident_now = device.resident(model.name)
    if device.budget is None:
        from_ram = model.name in device.ram
        loads = () if resident_now else (Move(model.name, "load", model.bytes, from_ram),)
        return ResidencyPlan(model.name, Placement.RESIDENT, loads,
                             transfer.load_seconds(model.bytes, from_ram) if loads else 0.0,
                             device.used + (0 if resident_now else model.bytes) + activation_bytes)
    need = offload_need(model, activation_bytes)
    placement = next((p for p in Placement if need[p] <= device.budget), None)
    if placement is None:
        raise NeverFits(need[Placement.GROUP_OFFLOAD], device.budget)
    moves: list[Move] = []
    ram, ram_free = set(device.ram), device.ram_free
    used = device.used

    def move_out(victim: Resident) -> None:
        nonlocal used, ram_free
        # Pinned RAM keeps a victim one PCIe copy away; without room there it goes back to disk.
        if victim.name in ram or victim.bytes <= ram_free:
            if victim.name not in ram:
                ram.add(victim.name)
                ram_free -= victim.bytes
            moves.append(Move(victim.name, "offload_to_ram", victim.bytes))
        else:
            moves.append(Move(victim.name, "evict_to_disk", victim.bytes))
        used -= victim.bytes

    if placement is Placement.RESIDENT:
        required = activation_bytes + (0 if resident_now else model.bytes)
    else:
        required = need[placement]
        if resident_now:  # this request's activations push it out of full residency
            move_out(next(r for r in device.gpu if r.name == model.name))
    others = [r for r in device.gpu if r.name != model.name]
    for victim in order(others, demand, transfer, frozenset(ram)):
        if used + required <= device.budget:
            break
        move_out(victim)
    load_s = 0.0
    if placement is Placement.RESIDENT and not resident_now:
        from_ram = model.name in device.ram
        moves.append(Move(model.name, "load", model.bytes, from_ram))
        load_s = transfer.load_seconds(model.bytes, from_ram)
    elif placement is not Placement.RESIDENT and model.name not in ram:
        # Offloaded weights stream from host RAM, so they are read from disk into it first.
        moves.append(Move(model.name, "load", model.bytes, from_ram=False))
        load_s = transfer.load_seconds(model.bytes, from_ram=False)
    return ResidencyPlan(model.name, placement, tuple(moves), load_s, used + required)


# ---- batch choice ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedItem:
    """A pending job as the batcher sees it."""

    id: str
    model: str
    batch_key: str
    created_at: float
    priority: int = 0


@dataclass(frozen=True)
class BatchConfig:
    """Batching knobs (settings)."""

    max_batch: int = 4
    max_wait_s: float = 0.0
    """How long a group smaller than max_batch may wait for batch mates while other work is eligible."""
    priority_s: float = 30.0
    """Seconds of waiting one priority point is worth."""


@dataclass(frozen=True)
class BatchChoice:
    """The batch to run next on a device, and why other jobs of that model could not join it."""

    model: str
    batch_key: str
    job_ids: tuple[str, ...]
    score: float
    not_batched: Mapping[str, int] = field(default_factory=dict)
    """Reason -> number of queued jobs of the same model left out."""


def batch_key_difference(a: str, b: str, names: Sequence[str] = ()) -> str:
    """A stable name for why two batch keys differ: the first differing field's name (or its index)."""
    pa, pb = a.split("|"), b.split("|")
    if len(pa) != len(pb):
        return "shape"
    for i, (x, y) in enumerate(zip(pa, pb, strict=True)):
        if x != y:
            return names[i] if i < len(names) else f"field_{i}"
    return "same"


def start_seconds(device: DeviceState, model: str, model_bytes: int, transfer: Transfer) -> float:
    """Seconds before `device` could start running `model`: 0 when resident, else its load (from host RAM when
    parked there, else from disk)."""
    if device.resident(model):
        return 0.0
    return transfer.load_seconds(model_bytes, from_ram=model in device.ram)


def routed_elsewhere(model: str, model_bytes: int, me: DeviceState, idle_peers: Sequence[DeviceState],
                     transfer: Transfer) -> bool:
    """Cluster routing: whether an idle peer could start `model` sooner than `me` (it holds the model resident,
    or parked in its node's RAM where `me` would read from disk). That peer takes it; `me` leaves it alone, so
    batches go where their model already is and loads happen only where they must."""
    mine = start_seconds(me, model, model_bytes, transfer)
    return any(start_seconds(p, model, model_bytes, transfer) < mine for p in idle_peers)


def pick_batch(queue: Sequence[QueuedItem], device: DeviceState, now: float, config: BatchConfig,
               switch_seconds: Callable[[str], float], max_batch_for: Callable[[str, str], int] | None = None,
               key_difference: Callable[[str, str], str] | None = None) -> BatchChoice | None:
    """The (model, batch key) group this idle device should run now, at most `max_batch` jobs, oldest first;
    None when the queue is empty or every group is still waiting for batch mates (see BatchConfig.max_wait_s).

    `switch_seconds(model)` is 0 for a resident model, else its load time to this device;
    `max_batch_for(model, key)` caps the batch by the memory estimate; `key_difference(a, b)` names why two
    keys differ (default: the index of the first differing `|`-separated field).
    """
    groups: dict[tuple[str, str], list[QueuedItem]] = {}
    for item in sorted(queue, key=lambda j: (j.created_at, j.id)):
        groups.setdefault((item.model, item.batch_key), []).append(item)
    if not groups:
        return None
    scored: list[tuple[float, tuple[str, str], list[QueuedItem], int]] = []
    for (model, key), items in groups.items():
        cap = max(1, min(config.max_batch, max_batch_for(model, key) if max_batch_for else config.max_batch))
        # Highest priority first within a group, then oldest.
        items = sorted(items, key=lambda j: (-j.priority, j.created_at, j.id))
        n = min(cap, len(items))
        age = now - min(j.created_at for j in items)
        bonus = max(j.priority for j in items) * config.priority_s
        score = age + bonus - (0.0 if device.resident(model) else switch_seconds(model)) / n
        scored.append((score, (model, key), items[:n], cap))
    # A group smaller than its cap may wait up to max_wait_s for batch mates; None tells the caller to wait.
    due = [s for s in scored if len(s[2]) >= s[3] or now - min(j.created_at for j in s[2]) >= config.max_wait_s]
    if not due:
        return None
    score, (model, key), chosen, _cap = max(due, key=lambda s: (s[0], -min(j.created_at for j in s[2])))
    left: dict[str, int] = {}
    differ = key_difference or batch_key_difference
    chosen_ids = {j.id for j in chosen}
    for (m, k), items in groups.items():
        if m != model:
            continue
        for item in items:
            if item.id in chosen_ids:
                continue
            reason = "batch_full" if k == key else differ(key, k)
            left[reason] = left.get(reason, 0) + 1
    return BatchChoice(model, key, tuple(j.id for j in chosen), score, left)
