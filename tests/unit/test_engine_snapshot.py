"""The engine's read model: one immutable snapshot of workers, residency, queue and counters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from server.engine.snapshot import EngineSnapshot, WorkerState
from tests.fakes import FakeWorker, request, rig, submit, wait_final


def test_a_snapshot_shows_workers_queue_and_counters_and_cannot_be_changed(tmp_path: Path) -> None:
    r = rig(tmp_path, [FakeWorker("w0"), FakeWorker("w1")], max_batch=2)
    for i in range(3):
        submit(r.store, f"j{i}", request(f"p{i}"))
    before = r.engine.snapshot()
    assert isinstance(before, EngineSnapshot) and not before.runs_engine and before.queue is not None
    assert sum(before.queue.pending_by_weights.values()) == 3 and before.queue.counts["pending"] == 3
    # Not started (a front end that does not run the engine): workers count as serving while they answer.
    assert [w.name for w in before.workers] == ["w0", "w1"] and len(before.serving) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.ready = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        before.batching["batches"] = 9  # type: ignore[index]
    r.engine.start()
    try:
        wait_final(r.store, ["j0", "j1", "j2"])
        after = r.engine.snapshot()
        assert after.runs_engine and len(after.serving) == 2
        assert after.batching["batches"] >= 2 and after.queue is not None and after.queue.counts["completed"] == 3
        assert before.queue.counts["pending"] == 3  # the old snapshot did not move
        assert r.engine.snapshot(queue=False).queue is None
    finally:
        r.engine.stop()


def test_worker_state_keeps_what_a_remote_worker_adds() -> None:
    view = {"name": "gpu0", "device": "cuda:0", "device_name": "H100", "node_ip": "127.0.0.1", "budget_bytes": 10,
            "resident": [{"weights": "sdxl-base-1.0", "bytes": 5, "placement": "resident",
                          "acceleration": {"compile": True}}],
            "host_ram": [{"weights": "flux2-klein-4b", "bytes": 3}], "loads": 2, "evictions": 1, "bytes_moved": 8,
            "memory": {"allocated": 4, "reserved": 6}}
    state = WorkerState.of(view, alive=True, fault=None, busy_with=("a", "b"))
    assert state.holds("sdxl-base-1.0") is not None and state.holds("flux2-klein-4b") is None
    shown = state.as_json(["a"])
    assert shown["node_ip"] == "127.0.0.1" and shown["current_batch"] == ["a"] and shown["other_keys_jobs"] == 1
    assert shown["resident"][0]["acceleration"] == {"compile": True} and shown["memory"]["reserved"] == 6
    snap = EngineSnapshot((state,), (), True, True, (), False, {}, {}, None)
    assert snap.active_acceleration("sdxl-base-1.0") == {"worker": "gpu0", "device": "cuda:0", "compile": True}
    down = dataclasses.replace(state, fault="device fault")
    assert EngineSnapshot((down,), (), True, True, (), False, {}, {}, None).active_acceleration("sdxl-base-1.0") is None
