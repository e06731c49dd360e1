"""The cluster scenario, run by tests/cluster/test_cluster_group.py inside a private network namespace (never
collected on its own: its name does not start with test_).

One session: a Ray head and a second Ray node (CPU-only, one `darkroom_worker` slot each), PostgreSQL, moto's S3
server, and two darkroom front ends on them (`--backend ray`, one job database, one bucket). The front end holding
the engine lock runs the one engine; both take requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.packaged import packaged_config
from tests.postgres_server import PostgresServer
from tests.s3_server import S3Server
from tests.support import ServerProcess, data_url, free_port, png_bytes
from weights.demo import build_demo

FAST = {"model": "flux-kontext-pro", "quality": "512", "num_inference_steps": 2}
# Uncached (the exact preset), so its length does not shrink with the fast preset's step cache: a few seconds.
SLOW = {"model": "flux-kontext-max", "quality": "512", "num_inference_steps": 150}
# Uncached (the exact preset) at 1024 px and the most steps: seconds even on the tiny model, time for a cancel.
LONGEST = {"model": "flux-kontext-max", "quality": "1K", "num_inference_steps": 200}


def _ray(*args: str) -> subprocess.CompletedProcess[str]:
    ray_cli = Path(sys.executable).with_name("ray")
    return subprocess.run([str(ray_cli), *args], capture_output=True, text=True, timeout=180, check=False,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def _nodes(address: str) -> list[dict[str, Any]]:
    code = ("import json, ray; ray.init(address=%r, log_to_driver=False, configure_logging=False); "
            "print(json.dumps([{k: n[k] for k in ('NodeID', 'Alive', 'NodeManagerPort', 'Resources')} "
            "for n in ray.nodes()]))") % address
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def cluster() -> Iterator[dict[str, Any]]:
    port = free_port()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--resources",
              '{"darkroom_worker": 1}', "--disable-usage-stats", "--object-store-memory", "150000000"]
    head = _ray("start", "--head", "--port", str(port), "--include-dashboard", "false", *common)
    assert head.returncode == 0, head.stdout + head.stderr
    address = f"127.0.0.1:{port}"
    other = _ray("start", "--address", address, *common)
    assert other.returncode == 0, other.stdout + other.stderr
    nodes = _nodes(address)
    assert len([n for n in nodes if n["Alive"]]) == 2, nodes
    try:
        yield {"address": address, "nodes": nodes}
    finally:
        # Inside this run's own PID namespace: only the processes this run started.
        _ray("stop", "--force")


@pytest.fixture(scope="session")
def postgres(postgres_server: PostgresServer) -> PostgresServer:
    """tests/conftest.py's PostgreSQL server, by the short name the scenario uses."""
    return postgres_server


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo weights every front end (and so every actor it starts) uses."""
    path = tmp_path_factory.mktemp("demo")
    build_demo(packaged_config().manifest["flux1-kontext-dev"], path)
    return path


@pytest.fixture(scope="session")
def front_ends(tmp_path_factory: pytest.TempPathFactory, cluster: dict[str, Any], postgres: PostgresServer,
               s3_server: S3Server, demo: Path) -> Iterator[list[ServerProcess]]:
    env = {"DARKROOM_BACKEND": "ray", "DARKROOM_RAY_ADDRESS": cluster["address"],
           "DARKROOM_DATABASE_URL": postgres.fresh_database("darkroom"), "DARKROOM_S3_ENDPOINT_URL": s3_server.url,
           "DARKROOM_S3_BUCKET": "darkroom-cluster", "DARKROOM_MODELS": "flux-kontext-pro,flux-kontext-max",
           "DARKROOM_MAX_BATCH": "1", "DARKROOM_LEASE_S": "5", "RAY_USAGE_STATS_ENABLED": "0",
           "DARKROOM_DEMO_WEIGHTS_PATH": str(demo)}
    procs = [ServerProcess(tmp_path_factory.mktemp("fe") / name, demo, env=env) for name in ("a", "b")]
    try:
        for p in procs:
            p.wait_ready(timeout=600)
        yield procs
    finally:
        for p in procs:
            p.stop()
            print(f"--- front end {p.data_dir.name} log ---\n{p.log()[-6000:]}")


def _db(postgres: PostgresServer, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(postgres.url("darkroom")) as conn:
        return conn.execute(sql, args).fetchall()


def _wait_final(fe: ServerProcess, task_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            view = httpx.get(f"{fe.base_url}/api/v1/tasks/{task_id}", timeout=10).json()
        except httpx.TransportError:
            # A front end that lost the engine lock restarts as a plain one: a few seconds without a listener.
            time.sleep(0.5)
            continue
        if view["status"] in ("completed", "failed", "cancelled"):
            return view
        time.sleep(0.25)
    raise AssertionError(f"{task_id} did not finish within {timeout} s")


def test_every_front_end_sees_every_worker(front_ends: list[ServerProcess]) -> None:
    for fe in front_ends:
        view = httpx.get(f"{fe.base_url}/api/v1/engine", timeout=30).json()
        workers = view["workers"]
        assert len(workers) == 2 and len({w["node_id"] for w in workers}) == 2, workers
        assert all(w["resident"] and w["resident"][0]["weights"] == "flux1-kontext-dev" for w in workers)
        assert httpx.get(f"{fe.base_url}/ready", timeout=30).status_code == 200
        metrics = httpx.get(f"{fe.base_url}/metrics", timeout=30).text
        assert metrics.count("darkroom_worker_up{") == 2


def test_jobs_spread_over_both_workers_each_finished_once(front_ends: list[ServerProcess],
                                                        postgres: PostgresServer) -> None:
    a, b = front_ends
    ids = []
    for i in range(8):
        fe = front_ends[i % 2]
        # The first job is long enough to stream its progress.
        r = httpx.post(f"{fe.base_url}/api/v1/images/generate", timeout=60, json={
            **(SLOW if i == 0 else FAST), "prompt": f"spread {i}", "celery": True,
            "image_urls": [data_url(png_bytes())]})
        assert r.status_code == 202, r.text
        ids.append(r.json()["task_id"])
    # Progress and the final event of a job submitted through A, streamed from B.
    events = []
    with httpx.stream("GET", f"{b.base_url}/api/v1/tasks/{ids[0]}/events", timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
                if events[-1] in ("completed", "failed", "cancelled"):
                    break
    assert events[0] == "status" and "progress" in events and events[-1] == "completed", events
    views = [_wait_final(front_ends[(i + 1) % 2], jid) for i, jid in enumerate(ids)]
    assert all(v["status"] == "completed" for v in views), [v.get("error") for v in views]
    workers = {v["darkroom"]["runtime"]["worker"] for v in views}
    assert len(workers) == 2, f"all jobs ran on {workers}"
    rows = _db(postgres, "SELECT id, finishes FROM jobs WHERE id = ANY(%s)", (ids,))
    assert sorted(r[1] for r in rows) == [1] * 8
    # Outputs live in the bucket: each front end serves every job's file.
    for v in views[:2]:
        for fe in front_ends:
            got = httpx.get(v["images"][0]["url"].replace(a.base_url, fe.base_url).replace(b.base_url, fe.base_url),
                            timeout=30)
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"


def test_cancel_through_the_other_front_end(front_ends: list[ServerProcess]) -> None:
    """A running job submitted through A, cancelled through B: the engine (wherever it runs) learns of it from the
    store, stops the render at its next step, and both front ends answer `cancelled`."""
    a, b = front_ends
    jid = httpx.post(f"{a.base_url}/api/v1/images/generate", timeout=60, json={
        **LONGEST, "prompt": "cancel me", "celery": True, "image_urls": [data_url(png_bytes())]}).json()["task_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        view = httpx.get(f"{b.base_url}/api/v1/tasks/{jid}", timeout=10).json()
        if view["status"] == "processing" and view["progress"]["step"] > 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the job never started")
    r = httpx.post(f"{b.base_url}/api/v1/tasks/{jid}/cancel", timeout=30)
    assert r.status_code == 202, r.text
    done = _wait_final(a, jid, timeout=120)
    assert done["status"] == "cancelled" and done["progress"]["step"] < LONGEST["num_inference_steps"], done
    assert _wait_final(b, jid)["status"] == "cancelled"


def test_postgres_restart_front_ends_carry_on(front_ends: list[ServerProcess], postgres: PostgresServer) -> None:
    postgres.stop()
    postgres.start()
    for fe in front_ends:
        deadline = time.monotonic() + 120
        status, text = 0, ""
        while status != 202 and time.monotonic() < deadline:
            try:
                r = httpx.post(f"{fe.base_url}/api/v1/images/generate", timeout=60, json={
                    **FAST, "prompt": "after the restart", "celery": True, "image_urls": [data_url(png_bytes())]})
                status, text = r.status_code, r.text
            except httpx.TransportError as exc:
                # The engine lock's session ended with the restart; if another front end took it first, the one
                # that held it restarts as a plain front end (a few seconds without a listener).
                status, text = 0, repr(exc)
            if status != 202:
                time.sleep(1)
        assert status == 202, text
        assert _wait_final(fe, r.json()["task_id"])["status"] == "completed"


def _raylet_pids(node_manager_port: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"raylet") and f"--node_manager_port={node_manager_port}".encode() in cmd:
            pids.append(int(entry.name))
    return pids


def test_a_node_killed_mid_job_finishes_elsewhere_once(front_ends: list[ServerProcess], cluster: dict[str, Any],
                                                      postgres: PostgresServer) -> None:
    a, _b = front_ends
    head = next(n for n in cluster["nodes"] if "node:__internal_head__" in n["Resources"])
    other = next(n for n in cluster["nodes"] if n["NodeID"] != head["NodeID"])
    ids = [httpx.post(f"{a.base_url}/api/v1/images/generate", timeout=60, json={
        **SLOW, "prompt": f"long {i}", "celery": True, "image_urls": [data_url(png_bytes())]}).json()["task_id"]
        for i in range(2)]
    # Wait until a job runs on the other node's worker, then kill that node (its raylet and the actor's process).
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:
        for jid in ids:
            view = httpx.get(f"{a.base_url}/api/v1/tasks/{jid}", timeout=10).json()
            batch = view["darkroom"]["batch"] or {}
            if view["status"] == "processing" and other["NodeID"][:12] in batch.get("worker", "") and \
                    view["progress"]["step"] > 0:
                victim = jid
        time.sleep(0.2)
    assert victim is not None, "no job started on the second node"
    engine = httpx.get(f"{a.base_url}/api/v1/engine", timeout=30).json()
    actor_pid = next(w["pid"] for w in engine["workers"] if w["node_id"] == other["NodeID"])
    for pid in [*_raylet_pids(other["NodeManagerPort"]), actor_pid]:
        os.kill(pid, signal.SIGKILL)
    done = _wait_final(a, victim, timeout=600)
    assert done["status"] == "completed", done.get("error")
    assert other["NodeID"][:12] not in done["darkroom"]["runtime"]["worker"]
    ((attempts, finishes),) = _db(postgres, "SELECT attempts, finishes FROM jobs WHERE id = %s", (victim,))
    assert finishes == 1 and attempts == 2
    for jid in ids:
        assert _wait_final(a, jid, timeout=600)["status"] == "completed"
    # The front end running the engine lists the worker as lost; every front end shows it unreachable or lost.
    views = [httpx.get(f"{fe.base_url}/api/v1/engine", timeout=60).json()["workers"] for fe in front_ends]
    lost = [w for ws in views for w in ws if w["fault"]]
    assert len(lost) == 1 and "worker lost" in lost[0]["fault"], lost
    for ws in views:
        (gone,) = [w for w in ws if w["node_id"] == other["NodeID"]]
        assert gone["fault"] or gone.get("unreachable")
        assert any(w["node_id"] == head["NodeID"] and not w["fault"] for w in ws)


def _kill_actor(address: str, namespace: str, name: str) -> None:
    code = (f"import ray; ray.init(address={address!r}, namespace={namespace!r}, log_to_driver=False, "
            f"configure_logging=False); ray.kill(ray.get_actor({name!r}), no_restart=True)")
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                   env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def test_a_front_end_listens_and_queues_before_any_worker_exists(
        tmp_path_factory: pytest.TempPathFactory, front_ends: list[ServerProcess], cluster: dict[str, Any],
        postgres: PostgresServer, s3_server: S3Server, demo: Path) -> None:
    """GPU nodes rebooting: a front end started while no worker slot is free (the only live node's slot is held by
    the other deployment's actor) listens at once, accepts and queues work, and says 503 on /ready; once a slot
    frees up its worker is found and the queued job runs. Last in the scenario: it takes the head's slot."""
    head = next(n for n in cluster["nodes"] if "node:__internal_head__" in n["Resources"])
    early = ServerProcess(tmp_path_factory.mktemp("fe") / "early", demo, env={
        "DARKROOM_BACKEND": "ray", "DARKROOM_RAY_ADDRESS": cluster["address"], "DARKROOM_RAY_NAMESPACE": "early",
        "DARKROOM_DATABASE_URL": postgres.fresh_database("early"), "DARKROOM_S3_ENDPOINT_URL": s3_server.url,
        "DARKROOM_S3_BUCKET": "darkroom-cluster", "DARKROOM_S3_PREFIX": "early",
        "DARKROOM_MODELS": "flux-kontext-pro", "DARKROOM_LEASE_S": "5", "RAY_USAGE_STATS_ENABLED": "0",
        "DARKROOM_DEMO_WEIGHTS_PATH": str(demo)})
    try:
        listened = early.wait_listening(timeout=120)
        r = httpx.post(f"{early.base_url}/api/v1/images/generate", timeout=60, json={
            **FAST, "prompt": "queued before any worker", "celery": True, "image_urls": [data_url(png_bytes())]})
        assert r.status_code == 202, r.text
        task = r.json()["task_id"]
        ready = httpx.get(f"{early.base_url}/ready", timeout=30)
        assert ready.status_code == 503 and "no worker running" in ready.json()["problems"], ready.text
        view = httpx.get(f"{early.base_url}/api/v1/tasks/{task}", timeout=30).json()
        assert view["status"] == "pending" and view["darkroom"]["estimate"]["device"] is None, view
        # Free the head's slot: the other deployment's front ends stop (they would start a new actor there) and
        # its actor goes; the early front end's actor, waiting for that slot, starts and joins.
        for fe in front_ends:
            fe.stop()
        _kill_actor(cluster["address"], "darkroom", f"darkroom-worker-{head['NodeID'][:12]}-0")
        done = _wait_final(early, task, timeout=300)
        assert done["status"] == "completed", done.get("error")
        # The queued job may run before the joined worker has preloaded every model ("models still loading"):
        # /ready turns 200 once it has, which on a loaded 2-core machine can take a while longer.
        deadline = time.monotonic() + 180
        ready = httpx.get(f"{early.base_url}/ready", timeout=30)
        while ready.status_code != 200 and time.monotonic() < deadline:
            time.sleep(1.0)
            ready = httpx.get(f"{early.base_url}/ready", timeout=30)
        assert ready.status_code == 200, ready.text
        print(f"early front end listened after {listened:.1f} s with no worker")
    finally:
        early.stop()
        print(f"--- front end early log ---\n{early.log()[-6000:]}")
