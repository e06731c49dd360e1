"""A gang as one worker: k devices of this node held together for one job, as k rank processes joined by
torch.distributed (NCCL on GPUs, gloo on a CPU) that spread each render (server/engine/gang_rank.py).

The gang forms when it is first given work (spawning its ranks, each loading the model onto its device) and keeps
the model while it renders that model again; it dissolves (its ranks exit and free their devices) when it is given
another model or plan, when a member device's single-GPU worker needs the device, or when a rank fails. A rank that
dies mid-render (a crash, an OOM kill, a lost GPU) ends the attempt on every rank: the others are killed, the
devices are free again, and the outcome is `RankLost` (the engine gives the job back to the queue once).
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection, wait
from typing import Any

from pipelines.acceleration import LoadProfile
from pipelines.base import RenderCancelled
from pipelines.memory import MemoryCoefficients
from pipelines.registry import family_class
from server.engine.gang_rank import RankSetup, run_rank
from server.engine.gangs import ParallelSpec, plan_for, rank_placement
from server.engine.policy import DeviceState, ModelFootprint, NeverFits, Placement, Resident
from server.engine.work import Cancelled, Completed, Failed, NotSpread, Outcome, RankLost, RenderWork
from server.engine.worker_handle import PreviewReport, StepReport, WorkerHandle
from weights.locate import LocatedWeights

log = logging.getLogger("darkroom.gang")


def free_port() -> int:
    """A free TCP port on loopback for the gang's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Ranks:
    """The processes of one formed gang and their pipes."""

    def __init__(self, weights: str, plan: dict[str, Any], processes: list[Any], conns: list[Connection],
                 cancel: Any) -> None:
        self.weights = weights
        self.plan = plan
        self.processes = processes
        self.conns = conns
        self.cancel = cancel
        self.load_s = 0.0

    def dead(self) -> list[int]:
        return [i for i, p in enumerate(self.processes) if not p.is_alive()]

    def stop(self, grace_s: float) -> None:
        """Ask the ranks to leave, then kill whichever has not."""
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        for p in self.processes:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
        for conn in self.conns:
            conn.close()


class GangWorker(WorkerHandle):
    """k devices of one node rendering one job at a time together (see the module docstring)."""

    def __init__(self, name: str, devices: tuple[str, ...], members: tuple[str, ...], dtype: str,
                 located: Mapping[str, LocatedWeights], specs: Mapping[str, ParallelSpec],
                 footprint: Callable[[str], ModelFootprint], memory: Mapping[str, MemoryCoefficients],
                 budget: int | None = None,
                 profiles: Mapping[str, LoadProfile] | None = None, form_timeout_s: float = 600.0,
                 collective_timeout_s: float = 300.0) -> None:
        self.name = name
        self.devices = devices
        self.device = "+".join(devices)
        self.members = members
        self.gpus = len(devices)
        self.dtype = dtype
        self.located = located
        self.specs = specs
        self._footprint = footprint
        self.memory = memory
        self.budget = budget
        self.profiles = profiles or {}
        self.form_timeout_s = form_timeout_s
        self.collective_timeout_s = collective_timeout_s
        self._ranks: _Ranks | None = None
        self._lock = threading.Lock()
        self.forms = 0
        self.rank_losses = 0
        self.renders = 0
        self.last_plan: dict[str, Any] | None = None

    # ---- what the engine reads -------------------------------------------------------------------------------
    @property
    def formed(self) -> str | None:
        """The weights the gang's ranks hold now (None: not formed)."""
        ranks = self._ranks
        return ranks.weights if ranks is not None else None

    def state(self) -> DeviceState:
        held = self.formed
        gpu = (Resident(held, self.footprint(held).bytes),) if held else ()
        return DeviceState(self.name, self.budget, gpu)

    def footprint(self, weights: str) -> ModelFootprint:
        return self._footprint(weights)

    def snapshot(self) -> dict[str, Any]:
        ranks = self._ranks
        return {"name": self.name, "device": self.device, "gpus": self.gpus, "devices": list(self.devices),
                "members": list(self.members), "formed": ranks is not None,
                "weights": ranks.weights if ranks else None, "plan": ranks.plan if ranks else self.last_plan,
                "forms": self.forms, "renders": self.renders, "rank_losses": self.rank_losses}

    def preload(self, names: list[str]) -> None:
        """Gangs load on demand: their devices belong to the single-GPU workers until a job needs a gang."""

    def evict(self, weights: str) -> None:
        if self.formed == weights:
            self.release()

    def release(self) -> None:
        """End the gang's ranks (their devices' memory is free when this returns)."""
        with self._lock:
            ranks, self._ranks = self._ranks, None
        if ranks is not None:
            ranks.stop(grace_s=10.0)
            log.info("gang %s dissolved (it held %s)", self.name, ranks.weights)

    # ---- rendering ---------------------------------------------------------------------------------------------
    def plan_of(self, work: RenderWork) -> dict[str, Any] | None:
        """The parallel plan `work` runs with on this gang (the one rule: gangs.plan_for), or None."""
        spec = self.specs.get(work.family)
        if spec is None:
            return None
        p = work.params
        plan = plan_for(spec, self.gpus, family_class(work.family).true_cfg(p),
                        spec.sequence(p.width, p.height, p.num_frames), self.devices[0].startswith("cuda"))
        return plan.record() if plan is not None else None

    def render(self, work: RenderWork, on_step: StepReport, on_preview: PreviewReport | None = None) -> Outcome:
        plan = self.plan_of(work)
        if plan is None:
            return NotSpread(f"{work.family} has no plan for {self.gpus} devices at this size")
        if work.adapters or any(work.params.adapters_per_image()):
            return NotSpread("gangs run no LoRA adapters")
        started = time.perf_counter()
        ranks = self._ranks
        if ranks is not None and (ranks.weights != work.weights or ranks.plan != plan):
            self.release()
            ranks = None
        load_s = 0.0
        if ranks is None:
            formed = self._form(work, plan)
            if not isinstance(formed, _Ranks):
                return formed
            ranks, load_s = formed, time.perf_counter() - started
        self.last_plan = plan
        return self._run(ranks, work, plan, load_s, on_step, on_preview)

    def placement(self, work: RenderWork) -> Placement:
        """How each rank holds the model: the residency policy's answer on an empty device of the gang's budget
        (each rank holds the whole model; NeverFits when not even offload fits)."""
        fam = family_class(work.family)
        activation = fam.activation_bytes(work.params, 1, self.memory[fam.name]) if fam.name in self.memory else 0
        return rank_placement(self.budget, self.footprint(work.weights), activation)

    def _form(self, work: RenderWork, plan: dict[str, Any]) -> _Ranks | Outcome:
        where = self.located[work.weights]
        try:
            placement = self.placement(work)
        except NeverFits as exc:
            return NotSpread(str(exc))
        if placement is Placement.GROUP_OFFLOAD:
            return NotSpread("it needs group offload on these devices, which a gang does not run")
        ctx = multiprocessing.get_context("spawn")
        cancel = ctx.Value("i", 0)
        port = free_port()
        processes, conns = [], []
        for rank, device in enumerate(self.devices):
            mine, theirs = ctx.Pipe()
            setup = RankSetup(rank, self.gpus, port, device, self.dtype, work.family, str(where.path), work.weights,
                              plan, self.profiles.get(work.weights), self.collective_timeout_s, placement.value,
                              logging.getLevelName(logging.getLogger().getEffectiveLevel()))
            proc = ctx.Process(target=run_rank, args=(setup, theirs, cancel), name=f"{self.name}-rank{rank}",
                               daemon=True)
            proc.start()
            theirs.close()
            processes.append(proc)
            conns.append(mine)
        ranks = _Ranks(work.weights, plan, processes, conns, cancel)
        self.forms += 1
        ready: set[int] = set()
        deadline = time.monotonic() + self.form_timeout_s
        while len(ready) < self.gpus:
            lost = self._lost(ranks, deadline)
            if lost is not None:
                return lost
            for i, conn in enumerate(ranks.conns):
                if i not in ready and conn.poll():
                    try:
                        message = conn.recv()
                    except EOFError:
                        continue  # its sentinel reports it next round
                    if message[0] == "ready":
                        ready.add(i)
                        ranks.load_s = max(ranks.load_s, float(message[1]))
                    elif message[0] == "failed":  # could not load or spread the model: one device will say why
                        ranks.stop(grace_s=0.0)
                        return NotSpread(f"rank {i} could not set up: {message[2]}")
            wait([c for i, c in enumerate(ranks.conns) if i not in ready] + [p.sentinel for p in processes],
                 timeout=0.5)
        with self._lock:
            self._ranks = ranks
        log.info("gang %s formed on %s for %s in %.1fs (%s)", self.name, self.device, work.weights, ranks.load_s,
                 plan)
        return ranks

    def _lost(self, ranks: _Ranks, deadline: float | None) -> RankLost | None:
        """RankLost (every rank stopped) when a rank has died or the gang did not form by `deadline`; else None."""
        dead = ranks.dead()
        late = deadline is not None and time.monotonic() > deadline
        if not dead and not late:
            return None
        return self._end(ranks, f"rank {dead[0]} on {self.devices[dead[0]]} exited (code "
                         f"{ranks.processes[dead[0]].exitcode})" if dead else
                         f"the gang did not form within {self.form_timeout_s:.0f}s")

    def _end(self, ranks: _Ranks, why: str) -> RankLost:
        """A rank is lost: stop every rank (their devices are free when this returns)."""
        self.rank_losses += 1
        with self._lock:
            if self._ranks is ranks:
                self._ranks = None
        ranks.stop(grace_s=0.0)
        log.error("gang %s: %s; every rank stopped, devices released", self.name, why)
        return RankLost(why)

    def _run(self, ranks: _Ranks, work: RenderWork, plan: dict[str, Any], load_s: float, on_step: StepReport,
             on_preview: PreviewReport | None) -> Outcome:
        ranks.cancel.value = 0
        for conn in ranks.conns:
            try:
                conn.send(("render", work))
            except OSError as exc:  # a rank died between renders
                return self._lost(ranks, None) or self._end(ranks, f"a rank's pipe broke ({exc})")
        results: dict[int, tuple[Any, ...]] = {}
        while len(results) < self.gpus:
            for i, conn in enumerate(ranks.conns):
                while i not in results and conn.poll():
                    try:
                        message = conn.recv()
                    except EOFError:
                        break
                    if message[0] == "step":
                        try:
                            on_step(message[1], message[2])
                        except RenderCancelled:
                            ranks.cancel.value = 1
                    elif message[0] == "preview":
                        if on_preview is not None:
                            on_preview(message[1], message[2], message[3])
                    else:
                        results[i] = message
                        if message[0] == "failed" and message[1] in ("error", "oom"):
                            return self._failed(ranks, message)
            if len(results) == self.gpus:
                break
            lost = self._lost(ranks, None)
            if lost is not None:
                return lost
            wait([c for i, c in enumerate(ranks.conns) if i not in results] + [p.sentinel for p in ranks.processes],
                 timeout=1.0)
        self.renders += 1
        kinds = {m[1] for m in results.values() if m[0] == "failed"}
        if "cancelled" in kinds:
            return Cancelled()
        if kinds:  # every rank refused the request the same way (checked before any collective)
            first = next(m for m in results.values() if m[0] == "failed")
            return Failed(first[2], first[3])
        done = results[0][1]
        where = self.located[work.weights]
        runtime = {**done["runtime"], "worker": self.name, "device": self.device, "devices": list(self.devices),
                   "demo_weights": where.demo}
        return Completed(done["images"], done["videos"], load_s, done["pipeline_s"], runtime)

    def _failed(self, ranks: _Ranks, message: tuple[Any, ...]) -> Outcome:
        """A rank failed mid-render: the others may wait in a collective that will never complete, so the gang
        ends (its devices are freed) and the attempt fails. A failure that is another rank's death seen from a
        survivor (its collective broke, or a rank is found dead within a moment) is that rank's loss."""
        deadline = time.monotonic() + _DEATH_GRACE_S
        while message[1] == "error" and not ranks.dead() and time.monotonic() < deadline:
            time.sleep(0.05)
        lost = self._lost(ranks, None)
        if lost is not None:
            return lost
        if message[1] == "error" and _collective_broke(message[2]):
            return self._end(ranks, f"a collective failed: {message[2][:200]}")
        with self._lock:
            if self._ranks is ranks:
                self._ranks = None
        ranks.stop(grace_s=0.0)
        if message[1] == "oom":
            # The plan's memory estimate was wrong for this request: one device, with its offload ladder, runs it.
            return NotSpread(message[2])
        return Failed(message[2])


_DEATH_GRACE_S = 2.0
"""How long a rank's error waits for news of a dead peer (a survivor's collective often fails first)."""
_COLLECTIVE_ERRORS = ("connection closed by peer", "connection reset", "timed out", "nccl", "processgroup",
                      "broken pipe", "gloo")


def _collective_broke(detail: str) -> bool:
    """Whether a rank's error is its process group failing (a peer gone or hung), not the render's own."""
    text = detail.lower()
    return any(marker in text for marker in _COLLECTIVE_ERRORS)
