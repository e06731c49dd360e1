"""What the engine is doing: /api/v1/engine (JSON) and /metrics (Prometheus, through server/metrics.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from server.api.auth import caller
from server.context import AppContext
from server.engine.snapshot import EngineSnapshot, QueueState
from server.version import __version__

router = APIRouter()


def engine_view(ctx: AppContext, snap: EngineSnapshot,
                visible: Callable[[list[str]], list[str]] = list) -> dict[str, Any]:
    """Per worker: resident and parked models with bytes, the running batch (only the ids `visible` keeps; the
    others are counted), loads; the queue per model; batching counters and the named reasons requests could not
    share a batch."""
    queue = snap.queue or QueueState({}, {})
    return {
        "version": __version__,
        "workers": [w.as_json(visible(list(w.busy_with))) for w in snap.workers],
        "gangs": [{**g, "current_batch": visible(list(g["current_batch"]))} for g in snap.gangs],
        "queue": dict(queue.pending_by_weights),
        "jobs": dict(queue.counts),
        "batching": dict(snap.batching),
        "not_batched": dict(snap.not_batched),
        "settings": {"max_batch": ctx.settings.engine.max_batch, "batch_max_wait_s": ctx.settings.engine.batch_max_wait_s,
                     "residency_policy": ctx.settings.engine.residency_policy,
                     "offload_ram_gb": ctx.settings.engine.offload_ram_gb, "gangs": ctx.settings.engine.gangs,
                     "gang_max_gpus": ctx.settings.engine.gang_max_gpus,
                     "gang_max_gpus_per_id": ctx.settings.engine.gang_max_gpus_per_id},
    }


def visible_task_ids(ctx: AppContext, who: str | None) -> Callable[[list[str]], list[str]]:
    """Keeps, of a list of running task ids, those `who`'s key may see: its own (an admin key, or a server with
    auth off, sees all). Blocking (it reads the owners from the store): call it off the event loop."""
    if ctx.keys.is_admin(who):
        return lambda ids: list(ids)

    return lambda ids: ctx.service.visible_to(who, ids)


@router.get("/api/v1/engine")
async def engine_state(request: Request) -> JSONResponse:
    """The engine's state as JSON. Running task ids are shown only to the key that owns them (an admin key sees
    all); other keys' jobs are counted per worker."""
    ctx: AppContext = request.app.state.ctx
    visible = visible_task_ids(ctx, caller(request.scope))
    return JSONResponse(await ctx.service.calls(lambda: engine_view(ctx, ctx.engine.snapshot(), visible)))


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: request and job histograms, and the engine's live state (the numbers of
    /api/v1/engine), in the text exposition format (prometheus-client)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    ctx: AppContext = request.app.state.ctx
    return Response(await ctx.service.calls(ctx.metrics.exposition), media_type=CONTENT_TYPE_LATEST)
