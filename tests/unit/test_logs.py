"""Log records as events: fields at the top level of a JSON line, or logfmt pairs after a text line's message."""

from __future__ import annotations

import json
import logging

from server.logs import JsonFormatter, TextFormatter, event


def test_an_event_carries_its_fields_in_both_formats() -> None:
    captured: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = captured.append  # type: ignore[method-assign]
    logger = logging.getLogger("darkroom.test-events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        event(logger, "job.completed", "finished t1 m: completed", job_id="t1", model="a model", run_s=1.5,
              code=None, jobs=["a", "b"])
    finally:
        logger.removeHandler(handler)
    record = captured[-1]
    as_json = json.loads(JsonFormatter().format(record))
    assert as_json["event"] == "job.completed" and as_json["job_id"] == "t1" and as_json["run_s"] == 1.5
    assert as_json["model"] == "a model" and "code" not in as_json and as_json["jobs"] == ["a", "b"]
    text = TextFormatter().format(record)
    assert text.endswith('finished t1 m: completed event=job.completed job_id=t1 model="a model" run_s=1.5 '
                         'jobs="[\\"a\\",\\"b\\"]"'), text
