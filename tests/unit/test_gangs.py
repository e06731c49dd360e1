"""Gangs without processes: the plan and size rules (server/engine/gangs.py) and the engine holding a gang's
devices together, with fake workers."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipelines.base import RenderParams, Task
from server.engine.gangs import (
    GangCandidate,
    GangPolicy,
    OfferedLoad,
    ParallelSpec,
    choose_gpus,
    load_parallel,
    plan_for,
)
from server.engine.request import GenerationRequest
from server.engine.work import NotSpread, RankLost
from tests.fakes import FakeWorker, rig, submit, wait_final
from tests.packaged import packaged_config

SPECS = packaged_config().parallel
VIDEO_SPEEDUP = SPECS["wan2.2-i2v-a14b"].speedup_at


def _spec(**kw: Any) -> ParallelSpec:
    base: dict[str, Any] = {"family": "f", "degrees": (2, 4, 8), "ulysses": True, "ring": True, "cfg": True,
                            "heads": 24, "token_px": 16, "frame_step": 0, "vae_tiled": True,
                            "speedup": {2: 1.9, 4: 3.6, 8: 6.9}}
    return ParallelSpec(**(base | kw))


def test_plans_split_cfg_pairs_first_then_the_sequence() -> None:
    spec = _spec()
    assert plan_for(spec, 2, true_cfg=True, tokens=4096, on_gpu=True).record()["cfg"] == 2  # type: ignore[union-attr]
    four = plan_for(spec, 4, true_cfg=True, tokens=4096, on_gpu=False)
    assert four is not None and (four.cfg, four.ulysses, four.ring) == (2, 2, 1)
    eight = plan_for(spec, 8, true_cfg=False, tokens=4096, on_gpu=True)
    assert eight is not None and (eight.cfg, eight.ulysses) == (1, 8)


def test_plans_refuse_what_cannot_divide() -> None:
    # 20 heads: Ulysses-8 cannot split them; ring attention can, but only on a GPU.
    spec = _spec(heads=20)
    ring = plan_for(spec, 8, true_cfg=False, tokens=4096, on_gpu=True)
    assert ring is not None and (ring.ring, ring.ulysses) == (8, 1)
    assert plan_for(spec, 8, true_cfg=False, tokens=4096, on_gpu=False) is None
    assert plan_for(_spec(), 4, true_cfg=False, tokens=4098, on_gpu=True) is None  # the sequence
    assert plan_for(_spec(degrees=(2,), speedup={2: 1.5}), 4, true_cfg=False, tokens=4096, on_gpu=True) is None


def test_unpadded_text_spreads_in_any_length_mode_and_ltx2_only_by_cfg() -> None:
    qwen = plan_for(SPECS["qwen-image-edit"], 2, true_cfg=False, tokens=4097, on_gpu=False)
    assert qwen is not None and qwen.uneven and qwen.ulysses == 2
    assert plan_for(SPECS["flux-kontext"], 2, true_cfg=False, tokens=4097, on_gpu=False) is None
    ltx = SPECS["ltx2"]
    assert plan_for(ltx, 2, true_cfg=True, tokens=4096, on_gpu=True).cfg == 2  # type: ignore[union-attr]
    assert plan_for(ltx, 4, true_cfg=True, tokens=4096, on_gpu=True) is None


def test_sequence_counts_latent_frames() -> None:
    wan = SPECS["wan2.2-i2v-a14b"]
    assert wan.sequence(1280, 720, 81) == (1280 // 16) * (720 // 16) * 21
    assert SPECS["flux-kontext"].sequence(1024, 1024, 0) == 4096


def _candidate(seconds: float = 250.0, model: str = "sora-2-pro", load_s: float = 10.0,
               speedup: Any = VIDEO_SPEEDUP) -> GangCandidate:
    plans = {k: plan_for(_spec(), k, True, 4096, True) for k in (2, 4, 8)}
    return GangCandidate("j", model, seconds, plans, speedup, load_s=load_s)  # type: ignore[arg-type]


def test_an_idle_node_spreads_a_long_clip_over_all_its_gpus() -> None:
    assert choose_gpus(_candidate(), [2, 4, 8], idle_gpus=8, waiting=0, policy=GangPolicy()) == 8


def test_a_busy_node_gives_each_waiting_job_a_gpu_first() -> None:
    policy = GangPolicy()
    assert choose_gpus(_candidate(), [2, 4, 8], idle_gpus=8, waiting=7, policy=policy) == 1
    assert choose_gpus(_candidate(), [2, 4, 8], idle_gpus=8, waiting=4, policy=policy) == 4  # 4 spare GPUs
    assert choose_gpus(_candidate(), [2, 4, 8], idle_gpus=8, waiting=5, policy=policy) == 2  # 3 spare: 2
    assert choose_gpus(_candidate(), [2, 4], idle_gpus=8, waiting=0, policy=policy) == 4  # only free sizes


def test_short_jobs_caps_and_inefficient_spreads_stay_small() -> None:
    assert choose_gpus(_candidate(seconds=1.0), [2, 4, 8], 8, 0, GangPolicy()) == 1
    assert choose_gpus(_candidate(), [2, 4, 8], 8, 0, GangPolicy(max_gpus_per_id={"sora-2-pro": 2})) == 2
    assert choose_gpus(_candidate(), [2, 4, 8], 8, 0, GangPolicy(max_gpus=4)) == 4
    image = SPECS["flux-kontext"].speedup_at  # 3.2x on 8 is 40 % efficient
    assert choose_gpus(_candidate(speedup=image), [2, 4, 8], 8, 0, GangPolicy(min_efficiency=0.5)) == 4
    # A 4 s job whose gang must first load 12 s of weights finishes sooner on the GPU that holds it.
    assert choose_gpus(_candidate(seconds=4.0, load_s=12.0), [2, 4, 8], 8, 0, GangPolicy()) == 1


def test_the_config_refuses_a_family_it_does_not_know(tmp_path: Path) -> None:
    import shutil

    from server.config import DarkroomConfig

    shutil.copytree(packaged_config().directory, tmp_path, dirs_exist_ok=True)
    plans = tmp_path / "parallel.toml"
    plans.write_text(plans.read_text().replace("[families.flux2-dev]", "[families.flux3-dev]"))
    with pytest.raises(ValueError, match="no such family flux3-dev"):
        DarkroomConfig.load(tmp_path)


def test_the_config_refuses_sizes_the_policy_cannot_use(tmp_path: Path) -> None:
    bad = tmp_path / "parallel.toml"
    bad.write_text('[families.x]\ndegrees = [3]\nulysses = true\nring = false\ncfg = false\nheads = 6\n'
                   'token_px = 16\nframe_step = 0\nspeedup = { 3 = 2.0 }\n')
    with pytest.raises(ValueError, match="degrees"):
        load_parallel(bad)


# ---- the engine: a gang holds its members' devices ------------------------------------------------------------

def _clip(prompt: str) -> GenerationRequest:
    # Full size, so the cost model predicts the minutes a real clip takes (the fakes render flat images).
    params = RenderParams(Task.IMAGE_TO_VIDEO, prompt, 1280, 704, 1, (1,), 50, 5.0, 1.0, num_sources=1,
                          num_frames=121, fps=24.0)
    return GenerationRequest(model_id="sora-2", weights="wan2.2-ti2v-5b", family="wan2.2-ti2v-5b", params=params,
                             output_format="png")


class FakeGang(FakeWorker):
    """Two fake devices rendering together."""

    def __init__(self, script: Any = None, hang: threading.Event | None = None) -> None:
        super().__init__("gang2-0", script=script, steps=3, step_s=0.05, hang=hang)
        self.gpus = 2
        self.members = ("w0", "w1")
        self.releases = 0

    def release(self) -> None:
        self.releases += 1



SETTINGS: dict[str, Any] = {}


def test_a_lone_job_on_an_idle_node_runs_on_the_gang_and_its_devices_wait(tmp_path: Path) -> None:
    hang = threading.Event()
    gang = FakeGang(hang=hang)
    w0, w1 = FakeWorker("w0"), FakeWorker("w1")
    r = rig(tmp_path, [w0, w1, gang], settings=SETTINGS)
    r.engine.start()
    try:
        submit(r.store, "clip", _clip("one"))
        deadline = time.monotonic() + 10
        while not gang.calls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gang.calls, "the gang did not take the lone job"
        submit(r.store, "next", _clip("two"))  # both devices are the gang's now: it waits
        time.sleep(0.5)
        assert not w0.calls and not w1.calls
        snap = r.engine.snapshot()
        assert [g["name"] for g in snap.gangs] == ["gang2-0"] and snap.gangs[0]["current_batch"] == ["clip"]
        assert {w.name for w in snap.workers} == {"w0", "w1"}
        hang.set()
        wait_final(r.store, ["clip", "next"])
        assert r.store.get("clip").status == "completed"  # type: ignore[union-attr]
        assert r.store.get("clip").worker == "gang2-0"  # type: ignore[union-attr]
    finally:
        r.engine.stop()


def test_a_queue_as_long_as_the_idle_devices_runs_one_job_per_device(tmp_path: Path) -> None:
    gang = FakeGang()
    w0, w1 = FakeWorker("w0", steps=3, step_s=0.1), FakeWorker("w1", steps=3, step_s=0.1)
    r = rig(tmp_path, [w0, w1, gang], settings=SETTINGS)
    submit(r.store, "a", _clip("a"))
    submit(r.store, "b", _clip("b"))
    r.engine.start()
    try:
        wait_final(r.store, ["a", "b"])
        assert not gang.calls
        assert len(w0.calls) + len(w1.calls) == 2
        # A single-device job first ends any gang formed over its device (its memory is needed).
        assert gang.releases >= 1
    finally:
        r.engine.stop()


def test_a_lost_rank_gives_the_job_back_once_then_fails_it(tmp_path: Path) -> None:
    lost_once = FakeGang(script=lambda _work, index: RankLost("rank 1 exited (code -9)") if index == 0 else None)
    r = rig(tmp_path, [FakeWorker("w0"), FakeWorker("w1"), lost_once], settings=SETTINGS)
    submit(r.store, "clip", _clip("one"))
    r.engine.start()
    try:
        wait_final(r.store, ["clip"])
        job = r.store.get("clip")
        assert job is not None and job.status == "completed"
        assert [x["code"] for x in job.retries or []] == ["gang_rank_lost"]
    finally:
        r.engine.stop()
    always = FakeGang(script=lambda _work, _index: RankLost("rank 0 exited (code -9)"))
    r = rig(tmp_path / "2", [FakeWorker("w0"), FakeWorker("w1"), always], settings=SETTINGS)
    submit(r.store, "clip", _clip("two"))
    r.engine.start()
    try:
        wait_final(r.store, ["clip"])
        job = r.store.get("clip")
        assert job is not None and job.status == "failed" and job.error["code"] == "worker_lost"  # type: ignore[index]
    finally:
        r.engine.stop()


def test_a_job_a_gang_declines_runs_on_one_device(tmp_path: Path) -> None:
    declines = FakeGang(script=lambda _work, _index: NotSpread("it needs group offload on these devices"))
    w0, w1 = FakeWorker("w0"), FakeWorker("w1")
    r = rig(tmp_path, [w0, w1, declines], settings=SETTINGS)
    submit(r.store, "clip", _clip("one"))
    r.engine.start()
    try:
        wait_final(r.store, ["clip"])
        job = r.store.get("clip")
        assert job is not None and job.status == "completed" and job.worker in ("w0", "w1")
        assert len(declines.calls) == 1 and not job.retries
    finally:
        r.engine.stop()


def test_a_gang_whose_devices_cannot_hold_the_model_is_not_offered_the_job(tmp_path: Path) -> None:
    small = FakeGang()
    small.budget = 500  # each device holds less than the model's 1000 bytes, even with model offload
    r = rig(tmp_path, [FakeWorker("w0"), FakeWorker("w1"), small], settings=SETTINGS)
    submit(r.store, "clip", _clip("one"))
    r.engine.start()
    try:
        wait_final(r.store, ["clip"])
        assert not small.calls
    finally:
        r.engine.stop()


def test_the_offered_load_counts_arrivals_and_forgets_them() -> None:
    load = OfferedLoad(tau_s=100.0)
    for t in range(100):
        load.arrived(float(t * 10), 30.0)  # 30 GPU-seconds every 10 s: 3 GPUs' worth
    assert 2.5 < load.gpus(1000.0) < 3.3
    assert load.reserve(1000.0, serving=0) == 3 and load.reserve(1000.0, serving=3) == 0
    assert load.gpus(2000.0) < 0.01  # nothing new for 10 tau
    trickle = OfferedLoad(tau_s=600.0)
    trickle.arrived(0.0, 180.0)  # one clip in ten minutes: 0.3 GPUs, which keeps no GPU back
    assert trickle.reserve(1.0, serving=0) == 0


def test_a_broken_collective_reads_as_a_lost_rank() -> None:
    from server.engine.gang_worker import _collective_broke

    assert _collective_broke("RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed "
                             "by peer [127.0.0.1]:4123")
    assert _collective_broke("DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error")
    assert not _collective_broke("ValueError: height must be a multiple of 16")
