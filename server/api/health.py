"""Liveness (/health: the process answers) and readiness (/ready: models located, workers alive)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.faults import StoreBusy

router = APIRouter()


@router.get("/health")
async def health() -> JSONResponse:
    """The process is up. Cheap, unauthenticated, never touches the engine."""
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 when every model's weights are located and loaded and every worker thread is alive; else 503."""
    ctx = request.app.state.ctx
    engine = ctx.engine
    workers = []
    for s in engine.slots:
        snap = s.handle.snapshot()
        # A front end that does not run the engine (Ray backend, another front end holds the lock) has no worker
        # threads: its workers count as serving while they answer.
        alive = s.alive if engine.started else not snap.get("unreachable")
        workers.append({"name": s.name, "device": s.device, "alive": alive, "fault": s.fault,
                        "loaded": sorted(r["weights"] for r in snap["resident"]), "busy_with": list(s.busy_with)})
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
    try:
        jobs: dict[str, int] | None = await ctx.service.job_counts()
    except StoreBusy:
        jobs = None
        problems.append("the job store is busy (locked or slow)")
    body = {
        "status": "ready" if not problems else "not_ready",
        "problems": problems,
        "degraded": [w["fault"] for w in workers if w["fault"]],
        "workers": workers,
        "weights": {name: ("demo" if w.demo else "real") for name, w in ctx.located.items()},
        "jobs": jobs,
        "running": engine.running(),
        "runs_engine": engine.started,
    }
    return JSONResponse(body, status_code=200 if not problems else 503)
