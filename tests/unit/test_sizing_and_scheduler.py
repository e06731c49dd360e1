"""Output size arithmetic and the first scheduling policy (plain data, no tensors)."""

from __future__ import annotations

import pytest

from server.engine.scheduler import OldestFirstGrouped, WorkerView
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


def _q(jid: str, model: str, key: str, t: float) -> QueuedJob:
    return QueuedJob(jid, model, key, t)


def test_oldest_first_grouped_by_model_and_key() -> None:
    queue = [_q("c", "sdxl", "k1", 3), _q("a", "kontext", "k1", 1), _q("b", "sdxl", "k1", 2),
             _q("d", "kontext", "k1", 4), _q("e", "kontext", "k2", 5)]
    plans = OldestFirstGrouped(max_batch=4).schedule(queue, [WorkerView("w0", "cpu", frozenset())])
    assert len(plans) == 1 and plans[0].job_ids == ("a", "d") and plans[0].model == "kontext"


def test_each_job_planned_once_across_workers() -> None:
    queue = [_q(str(i), "m", "k", i) for i in range(5)]
    workers = [WorkerView(f"w{i}", f"cuda:{i}", frozenset()) for i in range(3)]
    plans = OldestFirstGrouped(max_batch=2).schedule(queue, workers)
    assert [p.job_ids for p in plans] == [("0", "1"), ("2", "3"), ("4",)]
    assert OldestFirstGrouped().schedule([], workers) == []
