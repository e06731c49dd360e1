"""Admission: before a job is accepted, where it would run best and what it would need (GB, seconds).

A job no device can hold even with group offload is refused here, with the GB it needs and the GB there are;
every accepted job carries the estimate on its task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipelines.base import Family, RenderParams
from pipelines.memory import MemoryCoefficients
from server.engine.costs import Costs
from server.engine.policy import EVICTION_ORDERS, GB, DeviceState, NeverFits, ResidencyPlan, plan_residency
from server.engine.worker_handle import WorkerHandle
from server.errors import ApiError, ErrorCode


@dataclass(frozen=True)
class Admission:
    """What admission worked out for a job: its activation estimate and the estimate shown on its task."""

    activation_bytes: int
    estimate: dict[str, object]


def admit(model_id: str, weights: str, fam: type[Family], params: RenderParams, workers: Sequence[WorkerHandle],
          costs: Costs, memory: Mapping[str, MemoryCoefficients]) -> Admission:
    """The estimate on the device the job fits best (an empty device: residency is the scheduler's business);
    422 insufficient_vram when no device can hold it even with offload. With no worker at all the job is accepted
    to wait for one, without an estimate."""
    activation = fam.activation_bytes(params, 1, memory[fam.name])
    if not workers:
        # A cluster whose workers have not joined yet (or all taken out): the job waits in the queue for one.
        return Admission(activation, {"peak_gb": None, "device": None, "device_budget_gb": None, "placement": None,
                                      "seconds_full_size": None, "basis": "no worker is connected yet: the job waits "
                                      "in the queue until one is"})
    best: tuple[ResidencyPlan, str, int | None] | None = None
    need = have = 0
    for worker in workers:
        empty = DeviceState(worker.name, worker.budget)
        try:
            plan = plan_residency(empty, worker.footprint(weights), activation, {}, EVICTION_ORDERS["lru"],
                                  costs.transfer)
        except NeverFits as exc:
            need, have = max(need, exc.need), max(have, exc.have)
            continue
        if best is None or plan.peak_bytes < best[0].peak_bytes:
            best = (plan, worker.device, worker.budget)
    if best is None:
        raise ApiError(422, ErrorCode.INSUFFICIENT_VRAM, (
            f"{model_id} at {params.width}x{params.height} needs {need / GB:.2f} GB of GPU memory even with "
            f"offload, and the largest GPU budget here is {have / GB:.2f} GB; lower the size, num_images or "
            "num_frames"))
    plan, device, budget = best
    cost = costs.families.get(fam.name)
    seconds = None if cost is None else cost.job_seconds(fam.denoising_steps(params), params.width * params.height,
                                                         params.num_frames, params.num_images)
    estimate = {
        "peak_gb": round(plan.peak_bytes / GB, 3),
        "device": device,
        "device_budget_gb": None if budget is None else round(budget / GB, 1),
        "placement": plan.placement.value,
        "seconds_full_size": None if seconds is None else round(seconds + plan.load_s, 1),
        "basis": "weights from safetensors headers; activations and seconds from the family formula and "
                 "configs/costs.toml (full-size bf16 on one H100; uncalibrated)",
    }
    return Admission(activation, estimate)
