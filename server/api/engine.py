"""What the engine is doing: /api/v1/engine (JSON) and /metrics (Prometheus text), the same numbers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from server.context import AppContext

router = APIRouter()


def engine_view(ctx: AppContext) -> dict[str, Any]:
    """Per worker: resident and parked models with bytes, the running batch, loads; the queue per model;
    batching counters and the named reasons requests could not share a batch."""
    engine = ctx.engine
    return {
        "workers": [slot.snapshot() for slot in engine.slots],
        "queue": ctx.store.pending_by_weights(),
        "jobs": ctx.store.counts(),
        "batching": dict(engine.stats),
        "not_batched": dict(engine.not_batched),
        "settings": {"max_batch": ctx.settings.max_batch, "batch_max_wait_s": ctx.settings.batch_max_wait_s,
                     "residency_policy": ctx.settings.residency_policy,
                     "offload_ram_gb": ctx.settings.offload_ram_gb},
    }


@router.get("/api/v1/engine")
async def engine_state(request: Request) -> JSONResponse:
    """The engine's state as JSON."""
    return JSONResponse(engine_view(request.app.state.ctx))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def prometheus_text(view: dict[str, Any]) -> str:
    """The engine view in the Prometheus text exposition format."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP darkroom_{name} {help_text}")
        lines.append(f"# TYPE darkroom_{name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"darkroom_{name}{{{rendered}}} {value}" if rendered else f"darkroom_{name} {value}")

    workers = view["workers"]
    metric("model_resident_bytes", "gauge", "Weight bytes of a model on a worker's device.",
           [({"worker": w["name"], "device": w["device"], "model": r["weights"], "placement": r["placement"] or ""},
             r["bytes"]) for w in workers for r in w["resident"]])
    metric("model_host_ram_bytes", "gauge", "Weight bytes of a model parked in a worker's host-RAM tier.",
           [({"worker": w["name"], "model": r["weights"]}, r["bytes"]) for w in workers for r in w["host_ram"]])
    metric("worker_budget_bytes", "gauge", "Device bytes a worker may use (absent: unmanaged, CPU).",
           [({"worker": w["name"], "device": w["device"]}, w["budget_bytes"]) for w in workers
            if w["budget_bytes"] is not None])
    metric("worker_current_batch_jobs", "gauge", "Jobs in the batch a worker is running.",
           [({"worker": w["name"]}, len(w["current_batch"])) for w in workers])
    metric("worker_up", "gauge", "1 while a worker is in service, 0 once its device was taken out.",
           [({"worker": w["name"], "device": w["device"]}, 0 if w["fault"] else 1) for w in workers])
    metric("model_loads_total", "counter", "Models a worker brought onto its device (from disk or host RAM).",
           [({"worker": w["name"]}, w["loads"]) for w in workers])
    metric("bytes_moved_total", "counter", "Weight bytes a worker moved between disk, host RAM and device.",
           [({"worker": w["name"]}, w["bytes_moved"]) for w in workers])
    metric("queue_jobs", "gauge", "Pending jobs per model.",
           [({"model": m}, n) for m, n in sorted(view["queue"].items())])
    metric("jobs", "gauge", "Jobs per status.", [({"status": s}, n) for s, n in sorted(view["jobs"].items())])
    b = view["batching"]
    metric("batches_total", "counter", "Batches run.", [({}, b.get("batches", 0))])
    metric("batched_jobs_total", "counter", "Jobs run in those batches.", [({}, b.get("batched_jobs", 0))])
    metric("shared_calls_total", "counter", "Batches whose requests shared one pipeline call.",
           [({}, b.get("shared_calls", 0))])
    metric("oom_splits_total", "counter", "Shared calls split after running out of memory.",
           [({}, b.get("oom_splits", 0))])
    metric("oom_retries_total", "counter", "Single jobs retried with offload after running out of memory.",
           [({}, b.get("oom_retries", 0))])
    metric("device_faults_total", "counter", "Devices taken out after a fault.", [({}, b.get("device_faults", 0))])
    metric("not_batched_total", "counter", "Queued jobs of the running model left out of a batch, by reason.",
           [({"reason": r}, n) for r, n in sorted(view["not_batched"].items())])
    return "\n".join(lines) + "\n"


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics (same numbers as /api/v1/engine)."""
    return PlainTextResponse(prometheus_text(engine_view(request.app.state.ctx)),
                             media_type="text/plain; version=0.0.4; charset=utf-8")
