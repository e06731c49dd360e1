"""darkroom's workers as Ray actors: one per GPU on every node of a Ray cluster (Ray Core, not Ray Serve).

Each actor holds one `server.engine.worker.Worker` on its node (the same in-process worker a single machine runs:
weights located or demo-built on that node, residency, the only caller of its pipelines). The front end's engine
keeps every decision (which batch, which GPU, what to evict) and drives each actor through `RayWorkerHandle`, an
implementation of the torch-free worker interface: work goes out as plain data (inputs as encoded bytes, so no
filesystem is shared), outcomes come back typed. Progress and cancellation cross by polling the actor (a
threaded actor answers while it renders); an actor or node that dies mid-render yields `WorkerLost`, and the
engine gives its jobs back to the queue for another GPU.

Why not Ray Serve: its model multiplexing evicts by LRU per replica and routes by model id alone, and
`@serve.batch` batches by arrival, not by darkroom's batch keys and memory estimates; with 12-60 GB models,
darkroom's own residency and batching decisions are the point, so actors are placed by Ray and directed by us.

A node offers workers by its GPUs (`num_gpus=1` per actor); a node without GPUs offers CPU workers only when
started with a `darkroom_worker` resource (`ray start --resources='{"darkroom_worker": 1}'`), which is how the
tests run a cluster on a machine without GPUs. Actors are named and detached: a restarted front end (or another
front end) finds the same actors, with their models still loaded.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.acceleration import LoadProfile
from pipelines.base import RenderCancelled
from server.config import DarkroomConfig
from server.engine.policy import DeviceState, ModelFootprint
from server.engine.work import Outcome, RenderWork, WorkerLost
from server.engine.worker_handle import PreviewReport, StepReport, WorkerHandle
from server.settings import EngineSettings, FilesSettings

log = logging.getLogger("darkroom.cluster")

WORKER_RESOURCE = "darkroom_worker"
"""The custom resource a CPU-only node advertises, one unit per worker actor it should host."""
_POLL_S = 0.2
_CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ActorSpec:
    """What an actor needs to build its worker on its own node: the engine and files settings sections and the
    configuration object as the front end has them (file paths are the same on every node), the weights to
    locate, and their load profiles."""

    engine: EngineSettings
    files: FilesSettings
    config: DarkroomConfig
    needed: tuple[str, ...]
    profiles: Mapping[str, LoadProfile] = field(default_factory=dict)
    cpu_threads: int = 0


class RayWorkerActor:
    """The actor body (made a Ray actor class by `actor_class`): a worker on this node's GPU (or CPU)."""

    def __init__(self, name: str, spec: ActorSpec) -> None:
        import ray
        import torch

        from server.backends import local_worker, prepare_weights

        if spec.cpu_threads:
            torch.set_num_threads(spec.cpu_threads)
        try:
            located = prepare_weights(spec.files, spec.engine.demo, spec.config.manifest, set(spec.needed))
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} (on node {ray.util.get_node_ip_address()})") from None
        # Ray makes the actor's GPU the only visible one, so it is cuda:0 here.
        device = "cuda:0" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.worker = local_worker(name, device, spec.engine, spec.config, located, spec.profiles)
        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.demo = sorted(n for n, w in located.items() if w.demo)
        self._progress: dict[str, tuple[int, int]] = {}
        self._previews: dict[str, tuple[int, int, tuple[bytes, ...]]] = {}
        self._cancel: set[str] = set()
        self._render_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Name, device, budget, node, and which weights are demo weights here."""
        return {"name": self.worker.name, "device": self.worker.device, "budget": self.worker.budget,
                "node_id": self.node_id, "node_ip": self.node_ip, "demo_weights": self.demo, "pid": os.getpid()}

    def state(self) -> DeviceState:
        return self.worker.state()

    def footprint(self, weights: str) -> ModelFootprint:
        return self.worker.footprint(weights)

    def snapshot(self) -> dict[str, Any]:
        return {**self.worker.snapshot(), "node_id": self.node_id, "node_ip": self.node_ip, "pid": os.getpid()}

    def preload(self, names: list[str]) -> None:
        with self._render_lock:
            self.worker.preload(names)

    def evict(self, weights: str) -> None:
        with self._render_lock:
            self.worker.evict(weights)

    def memory_allocated(self) -> int:
        return self.worker.memory_allocated()

    def render(self, call_id: str, work: RenderWork) -> Outcome:
        """Render `work`; progress is kept under `call_id` for `progress`, and `cancel(call_id)` stops it at the
        next step (one render at a time: the engine never sends two, the lock makes sure)."""
        self._progress[call_id] = (0, 0)

        def on_step(step: int, total: int) -> None:
            self._progress[call_id] = (step, total)
            if call_id in self._cancel:
                raise RenderCancelled(call_id)

        def on_preview(step: int, total: int, jpegs: tuple[bytes, ...]) -> None:
            self._previews[call_id] = (step, total, jpegs)  # the latest only: the front end polls for it

        try:
            with self._render_lock:
                return self.worker.render(work, on_step, on_preview)
        finally:
            self._progress.pop(call_id, None)
            self._previews.pop(call_id, None)
            self._cancel.discard(call_id)

    def progress(self, call_id: str, preview_after: int = -1) -> tuple[tuple[int, int] | None,
                                                                       tuple[int, int, tuple[bytes, ...]] | None]:
        """(steps done, total) and the latest preview when it is of a later step than `preview_after`."""
        preview = self._previews.get(call_id)
        return self._progress.get(call_id), preview if preview and preview[0] > preview_after else None

    def cancel(self, call_id: str) -> None:
        self._cancel.add(call_id)


def actor_class() -> Any:
    """`RayWorkerActor` as a Ray actor class (built on demand: importing this module never imports ray)."""
    import ray

    # Threaded: progress, cancel and snapshot calls are answered while a render runs.
    return ray.remote(max_concurrency=4)(RayWorkerActor)


class RayWorkerHandle(WorkerHandle):
    """The engine's side of one worker actor."""

    def __init__(self, actor: Any, info: Mapping[str, Any]) -> None:
        self.actor = actor
        self.info = dict(info)
        self.name = str(info["name"])
        self.device = f"{info['node_ip']}/{info['device']}"
        self.budget = info["budget"]
        self._footprints: dict[str, ModelFootprint] = {}
        self._lost: str | None = None

    def demo_weights(self) -> frozenset[str]:
        return frozenset(self.info.get("demo_weights", ()))

    def _call(self, method: str, *args: Any, timeout: float = _CALL_TIMEOUT_S) -> Any:
        import ray

        return ray.get(getattr(self.actor, method).remote(*args), timeout=timeout)

    def state(self) -> DeviceState:
        try:
            return self._call("state")
        except Exception:  # noqa: BLE001 - a lost actor looks full: nothing is planned onto it
            return DeviceState(self.name, 0)

    def footprint(self, weights: str) -> ModelFootprint:
        if weights not in self._footprints:
            self._footprints[weights] = self._call("footprint", weights)
        return self._footprints[weights]

    def snapshot(self) -> dict[str, Any]:
        try:
            return self._call("snapshot", timeout=5.0)
        except Exception as exc:  # noqa: BLE001 - the view must show a lost worker, not fail
            return {"name": self.name, "device": self.device, "device_name": "unreachable",
                    "node_id": self.info.get("node_id"), "node_ip": self.info.get("node_ip"),
                    "budget_bytes": self.budget, "resident": [], "host_ram": [], "loads": 0, "evictions": 0,
                    "bytes_moved": 0, "memory": None, "unreachable": f"{type(exc).__name__}"}

    def preload(self, names: list[str]) -> None:
        self._call("preload", names, timeout=3600.0)

    def evict(self, weights: str) -> None:
        self._call("evict", weights, timeout=600.0)

    def memory_allocated(self) -> int:
        try:
            return int(self._call("memory_allocated", timeout=5.0))
        except Exception:  # noqa: BLE001 - a figure for the log only
            return 0

    def render(self, work: RenderWork, on_step: StepReport, on_preview: PreviewReport | None = None) -> Outcome:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        call_id = secrets.token_hex(8)
        try:
            ref = self.actor.render.remote(call_id, work)
        except RayActorError as exc:
            return WorkerLost(f"worker actor {self.name} is gone: {exc}"[:300])
        last: tuple[int, int] | None = None
        previewed = -1
        cancelled = False
        while True:
            try:
                done, _ = ray.wait([ref], timeout=_POLL_S)
                if done:
                    return ray.get(ref)
                step, preview = ray.get(self.actor.progress.remote(call_id, previewed), timeout=_CALL_TIMEOUT_S)
                if preview is not None and on_preview is not None:
                    previewed = preview[0]
                    on_preview(*preview)
            except (RayActorError, RayTaskError) as exc:
                # The actor (or its node) died mid-render: nothing of the call survives on it.
                return WorkerLost(f"worker actor {self.name} on {self.device} died: {type(exc).__name__}")
            except GetTimeoutError:
                continue
            if step and step != last and step[1] > 0 and not cancelled:
                last = step
                try:
                    on_step(*step)
                except RenderCancelled:
                    cancelled = True
                    self.actor.cancel.remote(call_id)


class RayCluster:
    """The front end's view of the cluster: connects, and finds (or creates) one worker actor per GPU."""

    def __init__(self, address: str, namespace: str, spec: ActorSpec) -> None:
        import ray

        self.namespace = namespace
        self.spec = spec
        if not ray.is_initialized():
            ray.init(address=address, namespace=namespace, log_to_driver=False, configure_logging=False,
                     include_dashboard=False)
        self._lock = threading.Lock()
        self.handles: dict[str, RayWorkerHandle] = {}

    def discover(self, wait_s: float = 0.0) -> list[RayWorkerHandle]:
        """Handles for every worker slot the live nodes offer (new actors created, existing ones found by name);
        waits up to `wait_s` for at least one. Returns the handles not seen before."""
        deadline = time.monotonic() + wait_s
        fresh: list[RayWorkerHandle] = []
        while True:
            fresh += self._discover_once()
            if self.handles or time.monotonic() >= deadline:
                return fresh
            time.sleep(1.0)

    def _discover_once(self) -> list[RayWorkerHandle]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cls = actor_class()
        fresh = []
        with self._lock:
            for node in ray.nodes():
                if not node.get("Alive"):
                    continue
                resources = node.get("Resources", {})
                gpus = int(resources.get("GPU", 0))
                slots = gpus or int(resources.get(WORKER_RESOURCE, 0))
                for index in range(slots):
                    name = f"darkroom-worker-{node['NodeID'][:12]}-{index}"
                    if name in self.handles:
                        continue
                    options: dict[str, Any] = {
                        "name": name, "namespace": self.namespace, "lifetime": "detached", "get_if_exists": True,
                        "max_restarts": 0, "num_cpus": 0,
                        "scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)}
                    if gpus:
                        options["num_gpus"] = 1
                    else:
                        options["resources"] = {WORKER_RESOURCE: 1}
                    try:
                        actor = cls.options(**options).remote(name, self.spec)
                        # The first call waits for the actor's constructor (weights located or demo-built).
                        info = ray.get(actor.info.remote(), timeout=3600)
                    except Exception as exc:  # noqa: BLE001 - one bad node must not stop the others
                        log.error("could not start worker %s on node %s: %s", name, node.get("NodeManagerAddress"),
                                  exc)
                        continue
                    handle = RayWorkerHandle(actor, info)
                    self.handles[name] = handle
                    fresh.append(handle)
                    log.info("worker %s on %s (node %s)", name, handle.device, info["node_id"][:12])
        return fresh

    def demo_weights(self) -> frozenset[str]:
        """Weights that run as demo weights on some worker."""
        return frozenset(n for h in self.handles.values() for n in h.info.get("demo_weights", []))
