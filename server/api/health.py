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
    engine = ctx.engine
    workers = []
    for s in engine.slots:
        snap = s.handle.snapshot()
        # A front end that does not run the engine (Ray backend, another front end holds the lock) has no worker
        # threads: its workers count as serving while they answer.
        alive = s.alive if engine.started else not snap.get("unreachable")
        workers.append({"name": s.name, "device": s.device, "alive": alive, "fault": s.fault,
                        "loaded": sorted(r["weights"] for r in snap["resident"]),
                        "busy_with": visible(list(s.busy_with))})
    problems = []
    if ctx.lifecycle.draining:
        problems.append(("restarting: " if ctx.lifecycle.restart else "draining: ") + ctx.lifecycle.reason)
    # A device taken out after a fault degrades the server; it is unready only when no worker is left.
    serving = [w for w in workers if w["alive"] and not w["fault"]]
    if not serving:
        problems.append("no worker running")
    if not engine.ready.is_set():
        problems.append("models still loading")
    problems.extend(sorted(engine.load_failures.values()))
    if engine.storage.closed_by is not None:
        problems.append("storage full: no new job starts until space is freed (accepted jobs wait)")
    return {
        "problems": problems,
        "degraded": [w["fault"] for w in workers if w["fault"]],
        "workers": workers,
        "weights": {name: ("demo" if w.demo else "real") for name, w in ctx.located.items()},
        "running": visible(engine.running()),
        "runs_engine": engine.started,
    }
