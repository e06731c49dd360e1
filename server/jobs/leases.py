"""Who holds a claimed job: lease owner ids that say which process (and worker) holds it, and whether that
process is still alive when it runs on this machine.

A claim carries an owner and an expiry that the running engine renews; an expired lease goes back to the queue.
A crash on this machine need not wait for the expiry: the owner id names the host, the pid and the process's
start time (so a recycled pid is not mistaken for the holder), and a holder that is gone is known to be gone.
Holders on other machines (several front ends on PostgreSQL, Ray workers) are judged by the expiry alone.
"""

from __future__ import annotations

import os
import secrets
import socket
from functools import cache


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None when it is not running."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


@cache
def _process_id(pid: int) -> str:
    return f"{socket.gethostname()}/{pid}/{_start_ticks(pid) or secrets.token_hex(6)}"


def process_id() -> str:
    """This process as a lease holder: host/pid/start ticks (a random token stands in where /proc is missing).
    Keyed by pid, so a forked child is a holder of its own."""
    return _process_id(os.getpid())


def owner_id(worker: str, process: str | None = None) -> str:
    """The lease owner for `worker` in this process."""
    return f"{process or process_id()}/{worker}"


def holder_gone(owner: str | None) -> bool:
    """True when `owner` is certainly dead: no owner at all, or a process on this host that no longer runs (or
    whose pid now belongs to a younger process). False when alive or unknowable (another host)."""
    if not owner:
        return True
    parts = owner.split("/")
    if len(parts) < 4 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    return _start_ticks(int(parts[1])) != parts[2]
