"""Two engine loops in two processes on one SQLite store: every job runs once, whichever loop claims it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from server.jobs.sqlite import SqliteJobStore
from server.jobs.store import JobStatus
from tests.fakes import request, submit
from tests.support import REPO


def test_two_engine_processes_on_one_store_never_run_a_job_twice(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    ids = [f"job{i:02d}" for i in range(24)]
    for i, jid in enumerate(ids):
        # Two batch keys, so both loops find work and batches form.
        submit(store, jid, request(f"prompt {i}", steps=2 + i % 2))
    procs = [subprocess.Popen([sys.executable, "-m", "tests.fakes", str(tmp_path), name, str(len(ids))], cwd=REPO)
             for name in ("loopA", "loopB")]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"{n}.ready").exists() for n in ("loopA", "loopB")) and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    for proc in procs:
        assert proc.wait(180) == 0
    records = [store.get(jid) for jid in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.status for r in records]  # type: ignore[union-attr]
    assert all(r.finishes == 1 and r.attempts == 1 for r in records)  # type: ignore[union-attr]
    assert {r.worker for r in records} == {"loopA", "loopB"}  # type: ignore[union-attr]  # both loops raced for work
    files = {f for r in records for f in (i["file"] for i in r.result["images"])}  # type: ignore[union-attr,index]
    assert len(files) == len(ids)
