"""The engine's gang rounds: which queued jobs the gangs take, holding a gang's member devices while it runs, and
handing device memory over between a gang and its members. A mixin of the engine loop (loop.py), as CallOutcomes
is; the rule itself is server/engine/gangs.py, its engine side gang_scheduling.py."""

from __future__ import annotations

import threading
import time

from server.engine.gang_scheduling import GangScheduling, GangView
from server.engine.scheduler import Plan
from server.engine.slots import WorkerSlot
from server.jobs.store import JobRecord, JobStore, QueuedJob


class GangRounds:
    """What the engine loop does for gangs; every method here but `_hand_over` is called with `_cond` held."""

    store: JobStore
    slots: list[WorkerSlot]
    gangs: GangScheduling
    _cond: threading.Condition

    def _members(self, slot: WorkerSlot) -> list[WorkerSlot]:
        """A gang's single-device workers (none for a single-device worker)."""
        names = set(slot.handle.members)
        return [s for s in self.slots if s.name in names] if names else []

    def _hand_over(self, slot: WorkerSlot, members: list[WorkerSlot], formed: list[WorkerSlot], plan: Plan) -> None:
        """Give the devices `slot` is about to use their memory: a gang's members park what does not fit beside
        its model; a single-device worker's idle gangs end their ranks."""
        for gang in formed:
            gang.handle.release()
        if members:
            need = slot.handle.footprint(plan.model).bytes
            for member in members:
                member.handle.make_room(need)

    def _gang_wanted(self, queue: list[QueuedJob]) -> dict[str, str]:
        """Called with `_cond` held: queued job id -> the gang that should take it now (gangs.py's rule)."""
        gangs = [s for s in self.slots if s.handle.gpus > 1 and not s.fault and not s.busy_with and s.alive]
        if not gangs:
            return {}
        single = [s for s in self.slots if s.handle.gpus == 1 and not s.fault and s.alive]
        idle = {s.name for s in single if not s.busy_with and not s.held_by}
        views = []
        for g in gangs:
            held = g.handle.state().gpu
            views.append(GangView(g.name, g.handle.gpus, frozenset(g.handle.members), not g.device.startswith("cpu"),
                                  held[0].name if held else None, g.handle.budget))
        # A running gang serves one job of the arriving work, as a busy single-device worker does.
        serving = sum(1 for s in single if s.busy_with) + sum(1 for s in self.slots if s.handle.gpus > 1 and s.busy_with)
        return self.gangs.wanted(queue, idle, views, serving, time.time())

    def _claim_for_gang(self, slot: WorkerSlot, queue: list[QueuedJob],
                        wanted: dict[str, str]) -> tuple[Plan | None, list[JobRecord]]:
        """Called with `_cond` held: the oldest queued job the rule gives this gang, claimed."""
        mine = [j for j in queue if wanted.get(j.id) == slot.name]
        if not mine:
            return None, []
        job = min(mine, key=lambda j: (-j.priority, j.created_at))
        plan = Plan(slot.name, (job.id,), job.weights or job.model, job.batch_key)
        return plan, self.store.claim([job.id], slot.name, slot.owner)
