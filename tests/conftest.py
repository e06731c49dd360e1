"""Session fixtures: tiny demo weights built once, and real servers on loopback.

The suite runs on two pytest-xdist workers (pyproject's addopts), a file per worker at a time; each worker builds
its own session fixtures. On a 2-core machine each worker (and every server it starts, which inherits the
environment) computes on one thread: two processes with a thread pool each would oversubscribe the cores, which
OpenMP handles badly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.packaged import packaged_config
from tests.support import ServerProcess
from weights.demo import build_all

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

API_KEY = "test-key-0123456789"
OTHER_KEY = "other-key-0123456789"
"""A second key of `keyed_server` (named "other", not an admin): what one key keeps, the other must not see."""


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every family's tiny random pipeline, built with the real classes and saved with save_pretrained."""
    path = tmp_path_factory.mktemp("demo-weights")
    build_all(packaged_config().manifest, path)
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    """An open server (no key, default URL policy)."""
    proc = ServerProcess(tmp_path_factory.mktemp("data") / "open", demo_dir)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`keyed_server`'s mounted LoRA folder (DARKROOM_LORA_DIR): tests put adapters in it."""
    return tmp_path_factory.mktemp("lora-dir")


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path, lora_dir: Path) -> Iterator[ServerProcess]:
    """A server with an API key (and a second one, OTHER_KEY) that trusts 127.0.0.1 for image URLs (so loopback
    test hosts work), with a mounted LoRA folder and a 0.5 MB LoRA cap."""
    data = tmp_path_factory.mktemp("data")
    keys = data / "keys.toml"
    keys.write_text(f'[keys.other]\nkey = "{OTHER_KEY}"\n')
    proc = ServerProcess(data / "keyed", demo_dir,
                         env={"DARKROOM_API_KEY": API_KEY, "DARKROOM_API_KEYS_FILE": str(keys),
                              "DARKROOM_URL_ALLOWLIST": "127.0.0.1/32", "DARKROOM_MAX_IMAGE_BYTES": "200000",
                              "DARKROOM_LORA_DIR": str(lora_dir), "DARKROOM_MAX_LORA_MB": "0.5"})
    try:
        proc.wait_ready(headers={"X-API-Key": API_KEY})
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL server on a free loopback port (Debian's binaries; skipped when not installed)."""
    from tests.postgres_server import PostgresServer, binaries

    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql package)")
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """moto's S3 server on a free loopback port (a real HTTP S3 API; throwaway credentials)."""
    from tests.s3_server import S3Server

    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def js_sdks() -> Any:
    """The providers' JavaScript SDKs, installed once per session (skipped where Node.js or npm is missing)."""
    from tests import js_clients

    why = js_clients.install()
    if why is not None:
        pytest.skip(why)
    return js_clients
