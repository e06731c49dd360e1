"""The cluster group: a real Ray cluster (head + one more node), PostgreSQL, an S3-compatible server and two
darkroom front ends, all inside a private network and PID namespace made for this run (`unshare -n -p -f`), where
only 127.0.0.1 exists: Ray binds the machine's interfaces whatever it is told, and nothing may leave loopback.
Everything started in there ends with it.

The scenario's assertions live in `cluster_scenario.py` (an ordinary pytest module, run by a pytest inside the
namespace with one cluster for all of it); this test starts it and reports its outcome."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.cluster


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.timeout(1500)  # the whole scenario in one test: the subprocess has its own limit of the same length
def test_cluster_scenario_in_a_private_network() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("ray is not installed (pip install -e '.[test]')")
    if not _can_unshare():
        pytest.skip("cannot make a private network namespace here (needs unshare -n -p, usually root)")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DARKROOM_", "RAY_"))},
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    inner = (f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider -x "
             "-o python_files='cluster_*.py' tests/cluster/cluster_scenario.py")
    r = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", inner], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1500, check=False)
    print(r.stdout[-20000:])
    print(r.stderr[-5000:], file=sys.stderr)
    assert r.returncode == 0, f"the cluster scenario failed (exit {r.returncode}); its output is above"
