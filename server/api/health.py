"""Liveness (/health: the process answers) and readiness (/ready: models located, workers alive)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.api.auth import caller
from server.api.engine import visible_task_ids
from server.context import AppContext
from server.faults import StoreBusy

router = APIRouter()


@router.get("/health")
async def health() -> JSONResponse:
    """The process is up. Cheap, unauthenticated, never touches the engine."""
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 when every model's weights are located and loaded and a worker is serving; else 503 with the problems.
    Task ids are shown only to the key that owns them (an admin key sees all)."""
    ctx = request.app.state.ctx
    visible = visible_task_ids(ctx, caller(request.scope))
    # Workers may be remote (a Ray actor answers over the network): asked off the event loop.
    body = await asyncio.to_thread(_readiness, ctx, visible)
    try:
        body["jobs"] = await ctx.service.job_counts()
    except StoreBusy:
        body["jobs"] = None
        body["problems"].append("the job store is busy (locked or slow)")
    body["status"] = "ready" if not body["problems"] else "not_ready"
    return JSONResponse(body, status_code=200 if not body["problems"] else 503)


def _readiness(ctx: AppContext, visible: Callable[[list[str]], list[str]]) -> dict[str, Any]:
    snap = ctx.engine.snapshot(queue=False)
    workers = [{"name": w.name, "device": w.device, "alive": w.alive, "fault": w.fault,
                "loaded": sorted(r.weights for r in w.resident), "busy_with": visible(list(w.busy_with))}
               for w in snap.workers]
    problems = []
    if ctx.lifecycle.draining:
        problems.append(("restarting: " if ctx.lifecycle.restart else "draining: ") + ctx.lifecycle.reason)
    # A device taken out after a fault degrades the server; it is unready only when no worker is left.
    if not snap.serving:
        problems.append("no worker running")
    if not snap.ready:
        problems.append("models still loading")
    problems.extend(snap.load_failures)
    if snap.storage_full:
        problems.append("storage full: no new job starts until space is freed (accepted jobs wait)")
    return {
        "problems": problems,
        "degraded": [w["fault"] for w in workers if w["fault"]],
        "workers": workers,
        "weights": {name: ("demo" if w.demo else "real") for name, w in ctx.located.items()},
        "running": visible(list(snap.running)),
        "runs_engine": snap.runs_engine,
    }
