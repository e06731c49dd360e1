"""Retention against a real store and real file stores: age expiry, the size cap removing the oldest finished
tasks first, pending work untouched, tombstones so URLs answer 410, and uploads swept on their own clock."""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from server.jobs.sqlite import SqliteJobStore
from server.jobs.store import NewJob, new_task_id
from server.media.blobs import LocalBlobs
from server.media.storage import InputStore, OutputStore
from server.media.uploads import UploadStore
from server.retention import Sweeper, files_expire_at


def _stores(tmp_path: Path) -> tuple[SqliteJobStore, OutputStore, InputStore, UploadStore]:
    blobs = LocalBlobs(tmp_path)
    return (SqliteJobStore(tmp_path / "jobs.sqlite3", lease_s=30.0), OutputStore(blobs), InputStore(blobs),
            UploadStore(blobs, retention_s=5.0))


def _finished_job(store: SqliteJobStore, outputs: OutputStore, inputs: InputStore, size: int = 64) -> tuple[str, str]:
    jid = new_task_id()
    inputs.save(jid, "source", 0, Image.new("RGB", (8, 8)))
    assert store.create(NewJob(jid, "m", "k", {}))
    (claimed,) = store.claim([jid], "w0")
    noise = Image.effect_noise((size, size), 80).convert("RGB")
    saved = outputs.save(noise, "png")
    assert store.complete(jid, {"images": [{"file": saved.name}]})
    return jid, saved.name


def test_age_expiry_removes_files_marks_tasks_and_leaves_tombstones(tmp_path: Path) -> None:
    store, outputs, inputs, uploads = _stores(tmp_path)
    old_id, old_file = _finished_job(store, outputs, inputs)
    pending = new_task_id()
    inputs.save(pending, "source", 0, Image.new("RGB", (8, 8)))
    store.create(NewJob(pending, "m", "k", {}))
    sweeper = Sweeper(store, outputs, inputs, uploads, retention_s=60.0, max_bytes=None)
    assert sweeper.sweep().tasks == 0  # nothing is old enough yet
    finished_at = store.get(old_id).finished_at  # type: ignore[union-attr]
    assert files_expire_at(store.get(old_id), 60.0) == finished_at + 60.0  # type: ignore[arg-type]
    result = sweeper.sweep(now=finished_at + 61.0)  # type: ignore[operator]
    assert result.tasks == 1 and result.files_bytes > 0
    assert outputs.read(old_file) is None and outputs.expired(old_file)
    assert not (tmp_path / "inputs" / old_id).exists()
    assert store.get(old_id).files_expired  # type: ignore[union-attr]
    # The pending job's inputs are still needed: never touched, however old.
    assert (tmp_path / "inputs" / pending).is_dir()
    assert sweeper.sweep(now=finished_at + 120.0).tasks == 0  # type: ignore[operator]
    # Tombstones go after a month: the URL is then an unknown name (404) like any other.
    sweeper.sweep(now=time.time() + 31 * 86400)
    assert not outputs.expired(old_file)


def test_size_cap_removes_oldest_first(tmp_path: Path) -> None:
    store, outputs, inputs, uploads = _stores(tmp_path)
    jobs = []
    for _ in range(4):
        jobs.append(_finished_job(store, outputs, inputs, size=96))
        time.sleep(0.01)
    total = outputs.total_bytes() + inputs.total_bytes()
    per_job = total / 4
    # Room for about two and a half jobs: the two oldest must go, the two newest stay.
    sweeper = Sweeper(store, outputs, inputs, uploads, retention_s=None, max_bytes=int(per_job * 2.5))
    result = sweeper.sweep()
    assert result.tasks == 2
    assert [outputs.read(name) is None for _jid, name in jobs] == [True, True, False, False]
    assert outputs.total_bytes() + inputs.total_bytes() <= per_job * 2.5


def test_uploads_expire_on_their_own_clock(tmp_path: Path) -> None:
    store, outputs, inputs, uploads = _stores(tmp_path)
    kept = uploads.create(b"x" * 10, "a.png", "image/png", None)
    sweeper = Sweeper(store, outputs, inputs, uploads, retention_s=None, max_bytes=None)
    assert sweeper.sweep().uploads == 0 and uploads.get(kept.id, None) is not None
    uploads.retention_s = -1.0  # everything made from now on is already past its time
    gone = uploads.create(b"y" * 10, "b.png", "image/png", None)
    assert sweeper.sweep().uploads == 1 and uploads.get(gone.id, None) is None
    assert uploads.get(kept.id, None) is not None
