"""Gangs on real processes: k rank processes on the gloo backend over loopback, tiny real pipelines.

What runs here is what runs on GPUs but for the backend (NCCL there) and ring attention (it needs a kernel that
returns the log-sum-exp; GPU only): the spread render equals the single-process one, a rank killed mid-step ends
the attempt on every rank and frees the devices, and a server with two devices spreads a lone clip over both.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from server.engine.gang_worker import GangWorker
from server.engine.policy import ModelFootprint
from server.engine.work import Completed, NotSpread, RankLost
from server.engine.worker import Worker
from tests.gang.renders import CONFIG, pixels, render_work
from tests.support import ServerProcess, data_url, png_bytes
from weights.locate import LocatedWeights


@pytest.fixture(scope="module")
def located(demo_dir: Path) -> dict[str, LocatedWeights]:
    names = ("wan2.2-ti2v-5b", "flux1-kontext-dev", "flux2-klein-4b", "qwen-image-edit-2511", "ltx-2")
    return {w: LocatedWeights(CONFIG.manifest[w], demo_dir / w, True) for w in names}


def _gang(located: dict[str, LocatedWeights], solo: Worker, k: int = 2) -> GangWorker:
    return GangWorker(f"gang{k}-0", ("cpu",) * k, tuple(f"w{i}" for i in range(k)), "float32", located,
                      CONFIG.parallel, solo.footprint, CONFIG.memory, form_timeout_s=240, collective_timeout_s=60)


@pytest.mark.parametrize(("weights", "guidance", "k", "split"), [
    ("wan2.2-ti2v-5b", 5.0, 2, {"cfg": 2, "ulysses": 1}),        # true CFG: the (cond, uncond) pair split
    ("wan2.2-ti2v-5b", 1.0, 2, {"cfg": 1, "ulysses": 2}),        # no CFG: Ulysses over the sequence
    ("wan2.2-ti2v-5b", 5.0, 4, {"cfg": 2, "ulysses": 2}),        # both: each CFG branch over two ranks
    ("ltx-2", 3.0, 2, {"cfg": 2, "ulysses": 1}),                 # CFG as a doubled batch: half each
    ("flux1-kontext-dev", 2.5, 2, {"cfg": 1, "ulysses": 2}),     # guidance-distilled FLUX.1: Ulysses
    ("flux2-klein-4b", 1.0, 2, {"cfg": 1, "ulysses": 2}),        # FLUX.2
    ("qwen-image-edit-2511", 1.0, 2, {"cfg": 1, "ulysses": 2}),  # unpadded text tokens: any-length Ulysses
])
def test_a_render_on_several_ranks_equals_the_single_process_render(located: dict[str, LocatedWeights],
                                                                    weights: str, guidance: float, k: int,
                                                                    split: dict[str, int]) -> None:
    solo = Worker("solo", "cpu", torch.float32, located, CONFIG.memory)
    work = render_work(weights, guidance)
    alone = solo.render(work, lambda _d, _t: None)
    assert isinstance(alone, Completed)
    gang = _gang(located, solo, k)
    try:
        spread = gang.render(work, lambda _d, _t: None)
        assert isinstance(spread, Completed), spread
        plan = spread.runtime["parallel"]
        assert {key: plan[key] for key in split} == split and spread.runtime["gpus"] == k
        if split["cfg"] == 2:  # every step's pair (or doubled batch) was split; pairs learn shapes on the first
            steps = work.params.num_inference_steps
            assert plan["cfg_split_pairs"] == (steps if weights == "ltx-2" else steps - 1)
        a, b = pixels(alone), pixels(spread)
        assert a.shape == b.shape
        # Same arithmetic in another order: at most one 8-bit level apart, almost everywhere equal.
        assert np.abs(a - b).max() <= 1.0 and np.abs(a - b).mean() < 1e-3
    finally:
        gang.release()


def _rank_pids(parent: int) -> list[int]:
    """Rank processes under `parent` (spawned interpreters, not multiprocessing's resource tracker)."""
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
                pids.append(int(child))
    return sorted(pids)


def test_a_rank_killed_mid_step_ends_the_attempt_on_every_rank(located: dict[str, LocatedWeights]) -> None:
    solo = Worker("solo", "cpu", torch.float32, located, CONFIG.memory)
    gang = _gang(located, solo)
    try:
        first = gang.render(render_work("wan2.2-ti2v-5b", 5.0), lambda _d, _t: None)
        assert isinstance(first, Completed)
        ranks = _rank_pids(os.getpid())
        assert len(ranks) == 2 and gang.formed == "wan2.2-ti2v-5b"

        def kill_at_step_2(done: int, _total: int) -> None:
            if done == 2:
                os.kill(ranks[1], signal.SIGKILL)

        lost = gang.render(render_work("wan2.2-ti2v-5b", 5.0, steps=12), kill_at_step_2)
        assert isinstance(lost, RankLost) and "exited" in lost.detail
        assert gang.formed is None and gang.rank_losses == 1
        for pid in ranks:  # every rank is gone: the devices are free
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        again = gang.render(render_work("wan2.2-ti2v-5b", 5.0), lambda _d, _t: None)
        assert isinstance(again, Completed) and gang.forms == 2
    finally:
        gang.release()
    assert _rank_pids(os.getpid()) == []


def test_a_model_a_rank_cannot_load_is_declined_for_one_device(tmp_path: Path) -> None:
    broken = {"wan2.2-ti2v-5b": LocatedWeights(CONFIG.manifest["wan2.2-ti2v-5b"], tmp_path / "missing", True)}
    gang = GangWorker("gang2-0", ("cpu", "cpu"), ("w0", "w1"), "float32", broken, CONFIG.parallel,
                      lambda weights: ModelFootprint(weights, (1000,)), CONFIG.memory, form_timeout_s=240)
    outcome = gang.render(render_work("wan2.2-ti2v-5b", 5.0), lambda _d, _t: None)
    assert isinstance(outcome, NotSpread) and "could not set up" in outcome.detail
    assert gang.formed is None and gang.rank_losses == 0
    assert _rank_pids(os.getpid()) == []


# ---- through a server: DARKROOM_DEVICE=cpu,cpu with gangs of 2 -----------------------------------------------

@pytest.fixture(scope="module")
def gang_server(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    """Two CPU devices and gangs of two. Its config dir says loads are free (tiny weights load in well under a
    second), so the cost model finds a spread worth its gang's load for tiny clips as it does for real ones."""
    configs = tmp_path_factory.mktemp("configs")
    shutil.copytree(CONFIG.directory, configs, dirs_exist_ok=True)
    costs = configs / "costs.toml"
    costs.write_text(costs.read_text().replace("fixed_s = 0.5", "fixed_s = 0.0")
                     .replace("disk_gb_per_s = 2.0", "disk_gb_per_s = 1000.0"))
    proc = ServerProcess(tmp_path_factory.mktemp("data") / "gangs", demo_dir, env={
        "DARKROOM_DEVICE": "cpu,cpu", "DARKROOM_GANGS": "2", "DARKROOM_GANG_MIN_JOB_S": "0",
        "DARKROOM_CONFIG_DIR": str(configs), "DARKROOM_MODELS": "sora-2,seedream-4.0"})
    try:
        proc.wait_ready(timeout=240)
        yield proc
    finally:
        proc.stop()


def _clip(c: httpx.Client, steps: int, **extra: Any) -> str:
    r = c.post("/api/v1/videos/generate", json={
        "model": "sora-2", "prompt": "waves", "image_urls": [data_url(png_bytes((64, 64)))], "resolution": "240p",
        "duration": 4, "num_inference_steps": steps, **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["task_id"])


def _final(c: httpx.Client, task_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = c.get(f"/api/v1/tasks/{task_id}").json()
        if view["status"] in ("completed", "failed", "cancelled"):
            return dict(view)
        time.sleep(0.1)
    raise AssertionError(f"{task_id} did not finish")


def test_a_lone_clip_is_spread_over_both_devices_and_says_so(gang_server: ServerProcess) -> None:
    with httpx.Client(base_url=gang_server.base_url, timeout=60) as c:
        engine = c.get("/api/v1/engine").json()
        assert [g["gpus"] for g in engine["gangs"]] == [2] and engine["gangs"][0]["members"] == ["w0", "w1"]
        view = _final(c, _clip(c, steps=4, previews=True))
        assert view["status"] == "completed", view
        runtime = view["darkroom"]["runtime"]
        assert runtime["gpus"] == 2 and runtime["worker"] == "gang2-0"
        assert runtime["previews"]["made"] >= 1  # rank 0 makes the live previews
        assert runtime["parallel"]["cfg"] * runtime["parallel"]["ulysses"] == 2
        gang = c.get("/api/v1/engine").json()["gangs"][0]
        assert gang["formed"] and gang["weights"] == "wan2.2-ti2v-5b" and gang["plan"]["gpus"] == 2
        metrics = c.get("/metrics").text
        assert 'darkroom_gang_formed{gang="gang2-0",gpus="2"} 1.0' in metrics
        assert 'darkroom_gang_renders_total{gang="gang2-0",gpus="2"} 1.0' in metrics
        # Two at once: one GPU each (a spread is for idle GPUs), and the gang lets go of its devices first.
        both = [_clip(c, steps=2), _clip(c, steps=2)]
        runs = [_final(c, t) for t in both]
        assert all(v["status"] == "completed" for v in runs)
        assert {v["darkroom"]["runtime"]["gpus"] for v in runs} <= {1, 2}


def test_a_rank_killed_mid_clip_puts_the_job_back_once(gang_server: ServerProcess) -> None:
    with httpx.Client(base_url=gang_server.base_url, timeout=60) as c:
        task = _clip(c, steps=40)
        server_pid = gang_server.server_pid()
        assert server_pid is not None
        deadline = time.monotonic() + 180
        killed = False
        while time.monotonic() < deadline and not killed:
            view = c.get(f"/api/v1/tasks/{task}").json()
            ranks = _rank_pids(server_pid)
            if view["status"] == "processing" and (view.get("progress") or {}).get("step", 0) >= 2 and ranks:
                os.kill(ranks[-1], signal.SIGKILL)
                killed = True
            time.sleep(0.05)
        assert killed, "the clip never ran on the gang"
        view = _final(c, task)
        assert view["status"] == "completed", view
        engine = c.get("/api/v1/engine").json()
        assert engine["batching"].get("gang_rank_losses") == 1
        assert engine["gangs"][0]["rank_losses"] == 1


def _wait_step(c: httpx.Client, task: str, step: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        view = c.get(f"/api/v1/tasks/{task}").json()
        if view["status"] == "processing" and (view.get("progress") or {}).get("step", 0) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"{task} never reached step {step}")


def test_a_cancelled_clip_stops_every_rank_at_one_step_and_the_gang_stays(gang_server: ServerProcess) -> None:
    with httpx.Client(base_url=gang_server.base_url, timeout=60) as c:
        warm = _final(c, _clip(c, steps=2))
        assert warm["darkroom"]["runtime"]["gpus"] == 2
        before = c.get("/api/v1/engine").json()["gangs"][0]
        task = _clip(c, steps=60)
        _wait_step(c, task, 2)
        assert c.post(f"/api/v1/tasks/{task}/cancel").status_code == 202
        assert _final(c, task)["status"] == "cancelled"
        # All ranks stopped at the same step (a rank left behind would hang a collective and be killed): the gang
        # is still formed and runs the next clip without forming again.
        after = _final(c, _clip(c, steps=2))
        assert after["status"] == "completed" and after["darkroom"]["runtime"]["gpus"] == 2
        gang = c.get("/api/v1/engine").json()["gangs"][0]
        assert gang["forms"] == before["forms"] and gang["rank_losses"] == before["rank_losses"]
