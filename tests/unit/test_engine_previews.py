"""The engine's side of live previews: only jobs that asked get them, each its own image's, gone when it ends."""

from __future__ import annotations

import io
import time
from dataclasses import replace
from pathlib import Path

from PIL import Image

from tests.fakes import FakeWorker, request, rig, submit, wait_final


def test_previews_reach_the_jobs_that_asked_and_leave_with_the_render(tmp_path: Path) -> None:
    worker = FakeWorker("w0", steps=8, step_s=0.1)
    r = rig(tmp_path, [worker], max_batch=4)
    asked = replace(request("a", num_images=1), previews=True)
    asked = asked.with_params(seeds=(40,))
    quiet = request("b", num_images=1).with_params(seeds=(90,))
    submit(r.store, "job-quiet", quiet)  # first in the call: the asking job's image is the call's second
    submit(r.store, "job-asked", asked)
    seen: dict[str, list[int]] = {"job-quiet": [], "job-asked": []}
    shades: list[int] = []
    r.engine.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for jid, steps in seen.items():
                rec = r.store.get(jid)
                assert rec is not None
                if rec.preview_step:
                    steps.append(rec.preview_step)
                    data = r.engine.previews.get(jid)
                    if data:
                        with Image.open(io.BytesIO(data)) as im:
                            shades.append(im.convert("RGB").getpixel((8, 8))[0])
            if all(r.store.get(j).status == "completed" for j in seen):  # type: ignore[union-attr]
                break
            time.sleep(0.02)
        wait_final(r.store, list(seen))
    finally:
        r.engine.stop()
    assert worker.calls[0].num_images == 2  # one merged call
    assert not seen["job-quiet"]  # it did not ask
    assert seen["job-asked"] and max(seen["job-asked"]) < 8  # never the last step: the result follows it
    # The fake paints seed + step: the preview is the asking job's own image (seed 40), not its call-mate's.
    assert shades and all(40 <= s <= 48 for s in shades)
    assert r.engine.previews.get("job-asked") is None  # removed once the render ended
