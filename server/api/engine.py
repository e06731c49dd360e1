"""What the engine is doing: /api/v1/engine (JSON) and /metrics (Prometheus, through server/metrics.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from server.context import AppContext
from server.version import __version__

router = APIRouter()


def engine_view(ctx: AppContext) -> dict[str, Any]:
    """Per worker: resident and parked models with bytes, the running batch, loads; the queue per model;
    batching counters and the named reasons requests could not share a batch. Blocking (it reads the store): call
    it off the event loop."""
    engine = ctx.engine
    return {
        "version": __version__,
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
    ctx: AppContext = request.app.state.ctx
    return JSONResponse(await ctx.service.calls(engine_view, ctx))


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: request and job histograms, and the engine's live state (the numbers of
    /api/v1/engine), in the text exposition format (prometheus-client)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    ctx: AppContext = request.app.state.ctx
    return Response(await ctx.service.calls(ctx.metrics.exposition), media_type=CONTENT_TYPE_LATEST)
