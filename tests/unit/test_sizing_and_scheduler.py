"""Output size arithmetic and the scheduler adapter over the policy (plain data, no tensors)."""

from __future__ import annotations

import pytest

from pipelines.batching import BatchKey
from server.engine.policy import GB, BatchConfig, DeviceState, ModelFootprint, Resident, Transfer
from server.engine.scheduler import VramAwareScheduler, WorkerView
from server.engine.sizing import output_size
from server.jobs.store import QueuedJob


@pytest.mark.parametrize(("long", "ratio", "mult", "want"), [
    (1024, (1, 1), 16, (1024, 1024)),
    (1024, (16, 9), 16, (1024, 576)),
    (1024, (9, 16), 16, (576, 1024)),
    (512, (21, 9), 16, (512, 224)),
    (1024, (21, 9), 64, (1024, 448)),
    (512, (3, 2), 64, (512, 320)),
    (512, (100, 1), 16, (512, 16)),
])
def test_output_size(long: int, ratio: tuple[int, int], mult: int, want: tuple[int, int]) -> None:
    assert output_size(long, ratio, mult) == want


def _q(jid: str, weights: str, key: str, t: float, activation: int = 0) -> QueuedJob:
    return QueuedJob(jid, weights, key, t, weights=weights, activation_bytes=activation)


def _key(family: str, shared: bool = True, width: int = 1024) -> str:
    return BatchKey(family, shared, "generate", width, 1024, 30, 5.0, 1.0, 0, 0).encode()


K1, K2, FLUX1 = _key("sdxl"), _key("flux", width=768), _key("flux")


def _scheduler(max_batch: int = 4) -> VramAwareScheduler:
    sizes = {"kontext": 34 * GB, "sdxl": 7 * GB, "m": GB}
    return VramAwareScheduler(BatchConfig(max_batch=max_batch), lambda w: ModelFootprint(w, (sizes[w],)),
                              Transfer(fixed_s=0.0))


def test_groups_by_weights_and_key_oldest_first_on_an_empty_device() -> None:
    queue = [_q("c", "sdxl", K1, 3), _q("a", "kontext", FLUX1, 1), _q("b", "sdxl", K1, 2),
             _q("d", "kontext", FLUX1, 4), _q("e", "kontext", K2, 5)]
    view = WorkerView("w0", "cuda:0", DeviceState("w0", 78 * GB))
    plan = _scheduler().schedule(queue, view, now=10.0)
    # Nothing is resident: SDXL's oldest job (8 s) less its load (3.5 s over 2 jobs) beats Kontext's
    # (9 s less 17 s over 2 jobs), although Kontext's job is older.
    assert plan is not None and plan.job_ids == ("b", "c") and plan.model == "sdxl"
    # With Kontext resident, its group goes first; the job with the other key is named as left out.
    warm = WorkerView("w0", "cuda:0", DeviceState("w0", 78 * GB, (Resident("kontext", 34 * GB, 0.0),)))
    plan = _scheduler().schedule(queue, warm, now=10.0)
    assert plan is not None and plan.job_ids == ("a", "d") and plan.model == "kontext"
    assert plan.not_batched == {"width": 1}  # named by the typed key's field


def test_solo_keys_never_batch_and_memory_caps_the_rest() -> None:
    solo = [_q(str(i), "m", _key("wan", shared=False), i) for i in range(3)]
    view = WorkerView("w0", "cuda:0", DeviceState("w0", 78 * GB))
    assert _scheduler().schedule(solo, view, 5.0).job_ids == ("0",)
    heavy = [_q(str(i), "sdxl", K1, i, activation=30 * GB) for i in range(4)]
    assert _scheduler().schedule(heavy, view, 5.0).job_ids == ("0", "1")  # (78 - 7) // 30
    assert _scheduler().schedule([], view, 5.0) is None
