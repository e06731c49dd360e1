"""The operator's kit on one real server: Prometheus metrics parsed with prometheus_client's own parser, JSON logs
with request and job ids, X-Request-Id, and retention (the sweeper removes a finished task's files when they
expire; their URLs answer 410 expired with the error shape; the task says so)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ServerProcess, data_url, png_bytes

RETENTION_S = 4.0
EDIT = {"model": "flux-kontext-pro", "prompt": "paint it blue", "quality": "512", "num_inference_steps": 1}


@pytest.fixture(scope="module")
def ops_server(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("data") / "ops", demo_dir, env={
        "DARKROOM_MODELS": "flux-kontext-pro", "DARKROOM_LOG_FORMAT": "json",
        "DARKROOM_RETENTION_HOURS": str(RETENTION_S / 3600), "DARKROOM_SWEEP_INTERVAL_S": "0.5"})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_histograms_count_what_happened(ops_server: ServerProcess) -> None:
    with ops_server.client() as c:
        before = _samples(c.get("/metrics").text)
        for _ in range(3):
            r = c.post("/api/v1/images/generate", json={**EDIT, "image_urls": [data_url(png_bytes())]})
            assert r.status_code == 200, r.text
        refused = c.post("/api/v1/images/generate", json={**EDIT, "model": "no-such-model",
                                                           "image_urls": [data_url(png_bytes())]})
        assert refused.status_code in (404, 422)
        scrape = c.get("/metrics")
    assert scrape.headers["content-type"].startswith("text/plain")
    after = _samples(scrape.text)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    route = {"route": "/api/v1/images/generate", "dialect": "darkroom", "model": "flux-kontext-pro", "status": "200"}
    assert grew("darkroom_http_requests_total", **route) == 3
    assert grew("darkroom_http_request_duration_seconds_count", **route) == 3
    assert grew("darkroom_http_request_duration_seconds_bucket", **route, le="+Inf") == 3
    assert grew("darkroom_job_queue_wait_seconds_count", model="flux-kontext-pro") == 3
    assert grew("darkroom_job_run_seconds_count", model="flux-kontext-pro", outcome="completed") == 3
    assert grew("darkroom_job_run_seconds_sum", model="flux-kontext-pro", outcome="completed") > 0
    assert grew("darkroom_images_generated_total", model="flux-kontext-pro") == 3
    assert grew("darkroom_batch_size_count", model="flux-kontext-pro") >= 1
    refused_labels = {"route": "/api/v1/images/generate", "dialect": "darkroom", "status": str(refused.status_code)}
    assert sum(v for (n, lab), v in after.items() if n == "darkroom_http_requests_total"
               and {k: v2 for k, v2 in lab if k != "model"} == refused_labels) >= 1
    # Live state from the engine: the model is resident on the worker, the queue is empty.
    resident = [(lab, v) for (n, lab), v in after.items() if n == "darkroom_model_resident_bytes"]
    assert any(dict(lab)["model"] == "flux1-kontext-dev" and v > 0 for lab, v in resident)
    assert _value(after, "darkroom_worker_up", worker="w0", device="cpu") == 1


def test_json_logs_and_request_ids(ops_server: ServerProcess) -> None:
    with ops_server.client() as c:
        given = c.post("/api/v1/images/generate", json={**EDIT, "image_urls": [data_url(png_bytes())]},
                       headers={"X-Request-Id": "studio-42.retry-1"})
        fresh = c.get("/health")
        hostile = c.get("/health", headers={"X-Request-Id": "bad id\twith spaces"})
    assert given.headers["x-request-id"] == "studio-42.retry-1"
    assert len(fresh.headers["x-request-id"]) == 16 and hostile.headers["x-request-id"] != "bad id\twith spaces"
    job_id = given.json()["task_id"]
    time.sleep(0.5)
    lines = [json.loads(line) for line in ops_server.log().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message", "request_id", "job_id"} <= set(e) for e in lines)
    accepted = [e for e in lines if e["job_id"] == job_id and e["message"].startswith("accepted")]
    finished = [e for e in lines if e["job_id"] == job_id and e["message"].startswith("finished")]
    assert accepted and accepted[0]["request_id"] == "studio-42.retry-1" and finished


def test_retention_sweeps_files_and_answers_410(ops_server: ServerProcess) -> None:
    with ops_server.client() as c:
        task = c.post("/api/v1/images/generate", json={**EDIT, "image_urls": [data_url(png_bytes())]}).json()
        image_url = task["images"][0]["url"]
        input_url = task["darkroom"]["inputs"][0]["url"]
        expires = task["darkroom"]["files_expire_at"]
        assert abs(expires - (task["completed_at"] + RETENTION_S)) < 0.01 and not task["darkroom"]["files_expired"]
        assert c.get(image_url).status_code == 200 and c.get(input_url).status_code == 200
        name = image_url.split("?", 1)[0].rsplit("/", 1)[1]
        on_disk = ops_server.data_dir / "files" / name
        assert on_disk.exists()
        deadline = time.monotonic() + RETENTION_S + 10
        while on_disk.exists() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not on_disk.exists(), "the sweeper did not remove the expired output"
        gone = c.get(image_url)
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "expired"
        assert "expired" in gone.json()["error"]["message"]
        assert c.get(input_url).status_code == 410
        assert not (ops_server.data_dir / "inputs" / task["task_id"]).exists()
        view = c.get(f"/api/v1/tasks/{task['task_id']}").json()
        assert view["darkroom"]["files_expired"] is True and view["darkroom"]["inputs"] == []
        # A name that never existed is still 404, not 410.
        assert c.get("/files/" + "A" * 32 + ".png").status_code == 404
        assert httpx.get(f"{ops_server.base_url}/health").status_code == 200


def test_grafana_dashboard_reads_series_the_server_exposes(ops_server: ServerProcess) -> None:
    import re

    from tests.support import REPO

    dashboard = json.loads((REPO / "configs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum|total)$", "", m) for e in exprs for m in re.findall(r"darkroom_[a-z_]+", e)}
    with ops_server.client() as c:
        exposed = {family.name for family in text_string_to_metric_families(c.get("/metrics").text)}
    # Families the engine reports only when it has something to say (a CUDA device, a parked model) are listed by
    # the collector either way; every name the dashboard reads must be one the server exposes.
    assert used and used <= exposed, sorted(used - exposed)
