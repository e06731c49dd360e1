"""The body of one gang rank: a process on one device that joins the gang's process group, loads the family, spreads
its denoisers as the plan says (pipelines/parallel.py) and renders what the gang's handle sends it, in step with
the other ranks. Started by server/engine/gang_worker.py with the spawn method (CUDA cannot be forked).

Messages to the handle (over the rank's pipe): `("ready", load_s)`, then per render rank 0 sends `("step", done,
total)` and `("preview", step, total, jpegs)` as it goes and every rank ends with `("done", result)` (rank 0's
carries the images or clips) or `("failed", kind, detail, error)`. A cancel travels the other way through a shared
flag that every rank reads at each step boundary with one all-reduce, so all ranks stop at the same step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipelines.acceleration import LoadProfile
from pipelines.base import ParamError, RenderCancelled
from pipelines.parallel import apply_plan
from pipelines.parallel_plan import ParallelPlan
from pipelines.previews import PreviewTap
from pipelines.registry import family_class
from server.engine.work import RenderWork

log = logging.getLogger("darkroom.gang")


@dataclass(frozen=True)
class RankSetup:
    """What a rank needs to start: its place in the gang and the model it serves."""

    rank: int
    world: int
    port: int
    device: str
    dtype: str
    family: str
    model_dir: str
    weights: str
    plan: dict[str, Any]
    profile: LoadProfile | None = None
    collective_timeout_s: float = 300.0
    placement: str = "resident"
    """How the weights sit on each rank's device: resident, or model offload when the model does not fit one
    device whole (the policy's answer for the gang's budget)."""
    log_level: str = "WARNING"
    """The server's log level (the rank's records go to the server's stderr)."""


def run_rank(setup: RankSetup, conn: Connection, cancel: Any) -> None:
    """The rank's life: join, load, then render until told to stop (or the handle goes away)."""
    logging.basicConfig(level=setup.log_level)
    started = time.perf_counter()
    cuda = setup.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(setup.device))
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // setup.world))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{setup.port}",
                            rank=setup.rank, world_size=setup.world,
                            timeout=timedelta(seconds=setup.collective_timeout_s))
    try:
        try:
            dtype = getattr(torch, setup.dtype)
            fam = family_class(setup.family)(Path(setup.model_dir), setup.device, dtype, setup.profile)
            fam.load()
            if setup.placement == "resident":
                fam.move_to(setup.device)
            else:
                fam.enable_offload(setup.placement, setup.device)
            plan = ParallelPlan.of(setup.plan)
            split = apply_plan(fam.denoiser_modules(), plan, "cuda" if cuda else "cpu", fam.cfg_style)
        except Exception as exc:  # told to the handle: the job then runs on one device, which reports it
            log.exception("rank %d could not set up %s", setup.rank, setup.weights)
            conn.send(("failed", "setup", f"{type(exc).__name__}: {exc}"[:500], None))
            return
        conn.send(("ready", time.perf_counter() - started))
        versions = {pkg: version(pkg) for pkg in ("torch", "diffusers", "transformers")}
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            work: RenderWork = message[1]
            conn.send(_render(setup, fam, plan, split, work, conn, cancel, versions))
    except (EOFError, KeyboardInterrupt):
        return  # the handle went away: nothing to report to
    finally:
        dist.destroy_process_group()


def _render(setup: RankSetup, fam: Any, plan: ParallelPlan, split: Any, work: RenderWork, conn: Connection,
            cancel: Any, versions: dict[str, str]) -> tuple[Any, ...]:
    from server.engine.worker import render_spec

    lead = setup.rank == 0
    flag = torch.zeros(1, dtype=torch.int32, device=setup.device)
    # Previews are encoded and sent from the tap's side thread while steps are sent from this one: a pipe's
    # messages must not interleave.
    sending = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with sending:
            conn.send(message)

    def on_step(done: int, total: int) -> None:
        flag.fill_(int(cancel.value))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag.item()):
            raise RenderCancelled("gang")
        if lead:
            send(("step", done, total))

    tap = None
    if lead and work.previews is not None and fam.makes_previews():
        tap = PreviewTap(work.previews, lambda step, total, jpegs: send(("preview", step, total, jpegs)))
        fam.preview_tap = tap
    started = time.perf_counter()
    true_cfg = fam.true_cfg(work.params)
    try:
        spec = render_spec(work)
        if split is not None:
            with split.call(true_cfg):
                result = fam.render(spec, on_step, {})
        else:
            result = fam.render(spec, on_step, {})
    except RenderCancelled:
        return ("failed", "cancelled", "", None)
    except ParamError as exc:
        return ("failed", "param", exc.message, {"code": "invalid_request", "message": exc.message,
                                                  "field": exc.field})
    except torch.OutOfMemoryError:
        return ("failed", "oom", f"{work.weights} ran out of memory on {setup.device} (rank {setup.rank})", None)
    except Exception as exc:  # reported to the handle, which ends the attempt on every rank
        log.exception("rank %d of the gang failed rendering %s", setup.rank, work.weights)
        return ("failed", "error", f"{type(exc).__name__}: {exc}"[:500], None)
    finally:
        if tap is not None:
            fam.preview_tap = None
            tap.close()
    if not lead:
        return ("done", None)
    runtime = {"device": setup.device, "dtype": setup.dtype, "weights": work.weights, "family": work.family,
               "placement": setup.placement, "versions": versions,
               "variant": fam.variant_choice.variant.name if fam.variant_choice is not None else "bf16",
               "acceleration": fam.applied.record() if fam.applied else None,
               "step_cache": result.stats.get("step_cache"),
               "denoiser_passes": result.stats.get("denoiser_passes", 0), "pipeline_calls": 1,
               "gpus": plan.gpus, "parallel": plan.record() | {
                   "cfg_split_pairs": split.split_pairs if split is not None else 0, "true_cfg": true_cfg}}
    if tap is not None:
        runtime["previews"] = {"made": tap.made}
    return ("done", {"images": result.images, "videos": result.videos,
                     "pipeline_s": time.perf_counter() - started, "runtime": runtime})
