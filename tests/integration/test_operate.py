"""The operator's kit on one real server: the Grafana dashboard's every panel queried through a real Prometheus
scraping the idle server, Prometheus metrics parsed with prometheus_client's own parser, JSON logs (every line,
one event per request and per job transition, with request and job ids), X-Request-Id, and retention (the sweeper
removes a finished task's files when they expire; their URLs answer 410 expired with the error shape; the task
says so)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
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


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None, reason="Prometheus is not installed (.ci/run installs Debian's prometheus)")
def test_every_dashboard_panel_shows_a_number_on_an_idle_server(ops_server: ServerProcess, tmp_path: Path) -> None:
    """First in the module: nothing has run on the server yet. A real Prometheus scrapes it every second; each
    expression of configs/grafana-dashboard.json, with $job bound, returns samples and every value is a number."""
    from tests.support import REPO, free_port

    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: darkroom\n    static_configs:\n"
                      f"      - targets: ['127.0.0.1:{ops_server.port}']\n")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        deadline = time.monotonic() + 60
        while True:  # four scrapes: enough samples for every rate()
            assert time.monotonic() < deadline, "Prometheus never scraped the server"
            try:
                r = httpx.get(api, params={"query": 'count_over_time(up{job="darkroom"}[1m])'}, timeout=5)
                result = r.json()["data"]["result"] if r.status_code == 200 else []
                if result and float(result[0]["value"][1]) >= 4:
                    break
            except httpx.HTTPError:
                pass  # still starting
            time.sleep(0.5)
        dashboard = json.loads((REPO / "configs" / "grafana-dashboard.json").read_text())
        empty = []
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$job", "darkroom")
                body = httpx.get(api, params={"query": expr}, timeout=10).json()
                assert body["status"] == "success", (panel["title"], body)
                values = [float(r["value"][1]) for r in body["data"]["result"]]
                if not values or any(math.isnan(v) or math.isinf(v) for v in values):
                    empty.append((panel["title"], expr, values))
        assert not empty, empty
    finally:
        prom.terminate()
        prom.wait(15)


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
    """Every line the server writes is JSON (the libraries' warnings and progress bars included); one `request`
    event per request, accepted or refused, and one event per job transition, their fields at the top level."""
    mask = data_url(png_bytes((96, 64), mode="L"))
    with ops_server.client() as c:
        given = c.post("/api/v1/images/generate", headers={"X-Request-Id": "studio-42.retry-1"}, json={
            **EDIT, "image_urls": [data_url(png_bytes())], "mask_url": mask, "num_inference_steps": 10,
            "strength": 0.6})
        refused = c.post("/api/v1/images/generate", json={**EDIT, "quality": "9K"},
                         headers={"X-Request-Id": "refused-1"})
        fresh = c.get("/health")
        hostile = c.get("/health", headers={"X-Request-Id": "bad id\twith spaces"})
    assert given.status_code == 200 and refused.status_code == 422
    assert given.headers["x-request-id"] == "studio-42.retry-1"
    assert len(fresh.headers["x-request-id"]) == 16 and hostile.headers["x-request-id"] != "bad id\twith spaces"
    job_id = given.json()["task_id"]
    time.sleep(0.5)
    ops_server.log()  # flushes
    raw = [line for line in ops_server.log_path.read_text().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in raw), [line for line in raw if not line.startswith("{")][:5]
    lines = [json.loads(line) for line in raw]
    assert all({"time", "level", "logger", "message", "request_id", "job_id"} <= set(e) for e in lines)
    events = {e.get("event"): e for e in lines if e["job_id"] == job_id}
    accepted, claimed, done = events["job.accepted"], events["job.claimed"], events["job.completed"]
    assert accepted["request_id"] == "studio-42.retry-1" and accepted["model"] == "flux-kontext-pro"
    assert accepted["task"] == "inpaint" and accepted["steps"] == 6  # strength 0.6 of 10: what really runs
    assert claimed["worker"] == "w0" and claimed["attempt"] == 1 and claimed["queued_s"] >= 0
    assert done["status"] == "completed" and done["run_s"] > 0 and done["attempts"] == 1
    requests = [e for e in lines if e.get("event") == "request" and e["route"] == "/api/v1/images/generate"]
    ok = next(e for e in requests if e["request_id"] == "studio-42.retry-1")
    assert ok["status"] == 200 and ok["outcome"] == "ok" and ok["dialect"] == "darkroom" and ok["ms"] > 0
    assert ok["model"] == "flux-kontext-pro" and ok["method"] == "POST"
    bad = next(e for e in requests if e["request_id"] == "refused-1")
    assert bad["outcome"] == "refused" and bad["code"] == "unsupported_quality" and bad["level"] == "INFO"


def test_a_first_start_logs_only_json(tmp_path: Path) -> None:
    """A first start builds the demo weights in the server process (the libraries' progress bars and warnings run
    then): with --log-format json every line is still one JSON object."""
    proc = ServerProcess(tmp_path / "first", tmp_path / "no-demo-yet",
                         env={"DARKROOM_MODELS": "seedream-4.0", "DARKROOM_LOG_FORMAT": "json"})
    try:
        proc.wait_ready()
    finally:
        proc.stop()
    raw = [line for line in proc.log_path.read_text().splitlines() if line.strip()]
    assert all(line.startswith("{") and json.loads(line) for line in raw), \
        [line for line in raw if not line.startswith("{")][:5]
    assert any("DEMO MODE" in json.loads(line)["message"] for line in raw)


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
