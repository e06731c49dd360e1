"""The machine and the settings' own checks: devices, versions, host RAM, disk, shared storage, the bind, and
whether a server could start (port, data dir)."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from server.doctor.findings import GB, Level, Sink

_LOW_DISK_GB = 50.0


def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _driver_version() -> str | None:
    """The NVIDIA driver's version via nvidia-smi (None when there is no such tool)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def devices(doc: Sink) -> list[str]:
    """GPUs with memory and compute capability; the device list the server would use."""
    import torch

    from server.engine.worker import resolve_devices

    devices = resolve_devices(doc.settings.engine.device)
    for dev in devices:
        if not dev.startswith("cuda"):
            doc.add("devices", "warning", f"{dev}: no CUDA device; renders run on the CPU (demo sizes only)",
                     "install the NVIDIA driver and a CUDA build of torch (see Dockerfile.cuda)")
            continue
        index = torch.device(dev).index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            doc.add("devices", "error", f"{dev} is configured but not present "
                     f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA device(s) found)",
                     "set --device auto or name a device that exists")
            continue
        free, total = torch.cuda.mem_get_info(index)
        major, minor = torch.cuda.get_device_capability(index)
        doc.add("devices", "ok", f"{dev} {torch.cuda.get_device_name(index)} (compute capability "
                 f"{major}.{minor}): {free / GB:.1f} GB free of {total / GB:.1f} GB")
    return devices


def versions(doc: Sink) -> None:
    """Driver, CUDA and library versions."""
    import torch

    from server.version import __version__

    driver = _driver_version()
    cuda = torch.version.cuda
    doc.add("versions", "ok", f"darkroom {__version__}, Python {sys.version.split()[0]}, torch {torch.__version__} "
             f"(CUDA {cuda or 'none'}), diffusers {_pkg('diffusers')}, transformers {_pkg('transformers')}, "
             f"accelerate {_pkg('accelerate')}, NVIDIA driver {driver or 'none found'}")
    if torch.cuda.is_available() and cuda is None:
        doc.add("versions", "warning", "a GPU is present but this torch build has no CUDA",
                 "install a CUDA build of torch 2.13 (see Dockerfile.cuda)")


def memory(doc: Sink, devices: list[str]) -> None:
    """Host RAM: what the machine has, and whether the RAM tier the settings ask for fits in it."""
    ram = host_ram()
    if ram is None:
        doc.add("memory", "warning", "host RAM could not be read (no /proc/meminfo)", None)
        return
    total, available = ram
    doc.add("memory", "ok", f"host RAM: {total / GB:.1f} GB, {available / GB:.1f} GB available now")
    gpus = sum(d.startswith("cuda") for d in devices)
    parked = doc.settings.engine.offload_ram_gb * gpus
    if gpus and parked * GB > total:
        doc.add("memory", "warning", f"offload_ram_gb {doc.settings.engine.offload_ram_gb:g} x {gpus} GPU(s) = "
                 f"{parked:g} GB of parked models is more than the machine's {total / GB:.1f} GB of RAM",
                 "lower --offload-ram-gb (models beyond it are dropped and reloaded from disk instead)")


def disk(doc: Sink, states: dict[str, tuple[str, Path | None]]) -> None:
    """Free space where outputs and the jobs database go (the data dir), and where real weights are pulled."""
    s = doc.settings
    free, total = _disk(s.files.data_dir)
    text = f"data dir {s.files.data_dir}: {free / GB:.1f} GB free of {total / GB:.1f} GB"
    if free < s.files.min_free_mb * 1e6:
        doc.add("disk", "error", text + f", below min_free_mb ({s.files.min_free_mb:g} MB): submissions are refused "
                 "with 507 storage_full", "free space in the data dir (or lower --min-free-mb)")
    elif free < _LOW_DISK_GB * GB:
        doc.add("disk", "warning", text, f"outputs fill it at a few MB per image; keep {_LOW_DISK_GB:g} GB free "
                 "(or set --max-files-gb to cap outputs)")
    else:
        doc.add("disk", "ok", text)
    missing = sorted(n for n, (state, _) in states.items() if state in ("demo", "demo-to-build", "missing"))
    weights_free, _total = _disk(s.files.resolved_weights_dir)
    if missing and weights_free < _LOW_DISK_GB * GB:
        doc.add("disk", "warning", f"weights dir {s.files.resolved_weights_dir}: {weights_free / GB:.1f} GB free; "
                 f"{len(missing)} weights entr{'y is' if len(missing) == 1 else 'ies are'} not pulled yet "
                 f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}) and real weights take 10-80 GB "
                 "each", "free space there (or point --weights-dir at a larger disk) before pulling")
    retention = f"{s.files.retention_hours:g} h" if s.files.retention_hours else "kept until deleted"
    cap = f", capped at {s.files.max_files_gb:g} GB" if s.files.max_files_gb else ""
    doc.add("disk", "ok", f"outputs and inputs expire after {retention}{cap}")


def start_up(doc: Sink) -> None:
    """Whether a server could start with these settings now: its port and its data dir free."""
    s = doc.settings
    if s.server.port:
        try:
            with socket.socket(socket.AF_INET6 if ":" in s.server.host else socket.AF_INET) as sock:
                sock.bind((s.server.host, s.server.port))
            doc.add("start-up", "ok", f"port {s.server.port} on {s.server.host} is free")
        except OSError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            doc.add("start-up", "error", f"port {s.server.port} on {s.server.host} "
                     + ("is already in use (another darkroom, or another program)" if in_use else
                        f"cannot be bound: {exc.strerror}"),
                     "stop what holds it, or choose another --port" if in_use else "check --host")
    holder = _data_dir_holder(s.files.data_dir)
    if holder is None:
        doc.add("start-up", "ok", f"data dir {s.files.data_dir} is not in use by another server")
    else:
        doc.add("start-up", "error", f"data dir {s.files.data_dir} is in use by another darkroom server (pid "
                 f"{holder})", "stop that server, or choose another --data-dir")


def sharing(doc: Sink) -> None:
    """Whether front ends sharing a job store also share files."""
    s = doc.settings
    if s.store.database_url is None:
        return
    try:
        s.check_file_sharing()
    except ValueError as exc:
        doc.add("storage", "error", str(exc), "set DARKROOM_S3_BUCKET, or DARKROOM_SHARED_DATA_DIR=true on a "
                 "data dir every front end mounts")
        return
    where = f"bucket {s.files.s3_bucket}" if s.files.s3_bucket else f"shared data dir {s.files.data_dir}"
    doc.add("storage", "ok", f"jobs in PostgreSQL, files in the {where}: every front end reads every job's files")


def network(doc: Sink) -> None:
    """Where the server would listen and who may call it."""
    s = doc.settings
    keyed = s.auth.api_key is not None or s.auth.api_keys_file is not None
    try:
        s.check_bind_safety()
    except ValueError as exc:
        doc.add("network", "error", str(exc), "set --api-key (or --api-keys-file), or bind to 127.0.0.1")
        return
    if s.server.host in ("127.0.0.1", "::1", "localhost"):
        doc.add("network", "ok", f"listens on {s.server.host}:{s.server.port} (this machine only)"
                 + ("; API key required" if keyed else "; no API key (fine on loopback)"))
    else:
        doc.add("network", "ok", f"listens on {s.server.host}:{s.server.port} with API key(s) required")
    if s.server.cors_origins:
        doc.add("network", "ok", f"browsers may call from: {', '.join(s.server.cors_origins)}")
    if s.files.url_allowlist:
        doc.add("network", "warning", f"image and webhook URLs may reach private addresses: "
                 f"{', '.join(s.files.url_allowlist)}", "allow only the hosts you trust")


def host_ram() -> tuple[int, int] | None:
    """(total, available) bytes of this machine's RAM, or None where /proc/meminfo cannot be read."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(info["MemTotal"].split()[0]) * 1024, int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def ram_verdict(where: str, need_gb: float, ram: tuple[int, int] | None, why: str) -> tuple[Level, str]:
    """Whether `need_gb` of host RAM is there: more than the machine has is an error, more than is free now a
    warning."""
    if ram is None:
        return "ok", f"fits on {where} (~{need_gb:.1f} GB of RAM; the machine's RAM could not be read)"
    total, available = ram[0] / GB, ram[1] / GB
    if need_gb > total:
        return "error", f"cannot run on {where}: needs ~{need_gb:.1f} GB of RAM ({why}), the machine has {total:.1f} GB"
    if need_gb > available:
        return "warning", (f"{where} needs ~{need_gb:.1f} GB of RAM ({why}); {available:.1f} GB of {total:.1f} GB is "
                           "available now")
    return "ok", f"fits on {where} (~{need_gb:.1f} GB of {total:.1f} GB of RAM)"


def _disk(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the file system `path` is (or would be) on."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return usage.free, usage.total


def _data_dir_holder(data_dir: Path) -> str | None:
    """The pid of the live server holding `data_dir`'s lock, or None when it is free (the lock is only tried)."""
    path = data_dir / "darkroom.lock"
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 32).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


def device_present(dev: str) -> bool:
    import torch

    index = torch.device(dev).index or 0
    return torch.cuda.is_available() and index < torch.cuda.device_count()
