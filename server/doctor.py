"""`darkroom doctor`: what this machine and configuration can serve, and what to do about what it cannot.

Reads the same settings and configs/ files the server would, never starts it and never loads a model: devices
and versions, attention backends and fp8 (and which configured backends fall back here), each weights entry on
disk, whether each configured id fits at its default size (GPU memory from the safetensors headers and the memory
formulas admission uses; host RAM for CPU placement and for offloaded weights), disk space for outputs and
weights, whether the port and the data dir are free for a server to start, shared storage, and the bind/auth
situation. Each finding is ok, warning (works, but slower or riskier than configured) or error (something
configured cannot work); the exit status follows the worst: 0, 1 or 2, with --json too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

from server.settings import Settings

Level = Literal["ok", "warning", "error"]
LEVELS: tuple[Level, ...] = ("ok", "warning", "error")
"""In order of severity; the exit status is the index of the worst finding."""
GB = 1e9
_LOW_DISK_GB = 50.0


@dataclass(frozen=True)
class Finding:
    """One line of the report; `fix` says what to do when it is not ok."""

    section: str
    level: Level
    text: str
    fix: str | None = None


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


class Doctor:
    """Collects findings for one configuration."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.findings: list[Finding] = []
        self._devices: list[str] = []

    def add(self, section: str, level: Level, text: str, fix: str | None = None) -> None:
        """Record a finding."""
        self.findings.append(Finding(section, level, text, fix))

    def run(self) -> list[Finding]:
        """Every check, in the order the report prints them."""
        devices = self.devices()
        self.versions()
        self.acceleration(devices)
        located = self.weights()
        self.models(devices, located)
        self.memory()
        self.disk(located)
        self.sharing()
        self.network()
        self.start_up()
        return self.findings



    def devices(self) -> list[str]:
        """GPUs with memory and compute capability; the device list the server would use."""
        import torch

        from server.engine.worker import resolve_devices

        devices = self._devices = resolve_devices(self.settings.device)
        for dev in devices:
            if not dev.startswith("cuda"):
                self.add("devices", "warning", f"{dev}: no CUDA device; renders run on the CPU (demo sizes only)",
                         "install the NVIDIA driver and a CUDA build of torch (see Dockerfile.cuda)")
                continue
            index = torch.device(dev).index or 0
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                self.add("devices", "error", f"{dev} is configured but not present "
                         f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA device(s) found)",
                         "set --device auto or name a device that exists")
                continue
            free, total = torch.cuda.mem_get_info(index)
            major, minor = torch.cuda.get_device_capability(index)
            self.add("devices", "ok", f"{dev} {torch.cuda.get_device_name(index)} (compute capability "
                     f"{major}.{minor}): {free / GB:.1f} GB free of {total / GB:.1f} GB")
        return devices

    def versions(self) -> None:
        """Driver, CUDA and library versions."""
        import torch

        from server.version import __version__

        driver = _driver_version()
        cuda = torch.version.cuda
        self.add("versions", "ok", f"darkroom {__version__}, Python {sys.version.split()[0]}, torch {torch.__version__} "
                 f"(CUDA {cuda or 'none'}), diffusers {_pkg('diffusers')}, transformers {_pkg('transformers')}, "
                 f"accelerate {_pkg('accelerate')}, NVIDIA driver {driver or 'none found'}")
        if torch.cuda.is_available() and cuda is None:
            self.add("versions", "warning", "a GPU is present but this torch build has no CUDA",
                     "install a CUDA build of torch 2.13 (see Dockerfile.cuda)")

    def acceleration(self, devices: list[str]) -> None:
        """Attention backends and fp8 per device, and the configured backends that are not usable here (the
        models that ask for them first fall back, which is slower than configured)."""
        from pipelines.acceleration import ATTENTION_BACKENDS, choose_attention, choose_fp8

        profiles = self._profiles()
        for dev in devices:
            usable = [b for b in ATTENTION_BACKENDS if choose_attention((b,), dev, dispatches=True)[0] == b]
            fp8, reason = choose_fp8("prefer", dev)
            self.add("acceleration", "ok", f"{dev}: attention backends usable here: {', '.join(usable)}; fp8: "
                     f"{'yes' if fp8 else 'no (' + str(reason) + ')'}")
            falls_back: dict[tuple[str, str], list[str]] = {}
            for weights, preference in profiles.items():
                chosen, reasons = choose_attention(preference, dev, dispatches=True)
                if reasons:
                    falls_back.setdefault((reasons[0], chosen), []).append(weights)
            for (why, chosen), names in sorted(falls_back.items()):
                self.add("acceleration", "warning", f"{dev}: {', '.join(sorted(names))} ask for "
                         f"{why.split(':', 1)[0]} attention first, which is not usable here ({why.split(': ', 1)[-1]}); "
                         f"they run with {chosen}", "run on a GPU the backend supports (or install its package), or "
                         "put the backend you have first in configs/acceleration.toml")

    def _profiles(self) -> dict[str, tuple[str, ...]]:
        """Attention preference per served weights entry, from the config dir (empty when it does not load: the
        models check reports that)."""
        from server.acceleration_config import Acceleration
        from server.catalog import Catalog
        from weights.manifest import load_manifest

        s = self.settings
        try:
            catalog = Catalog.load(load_manifest(), s.config("models.toml"), license_policy=s.license_policy)
            if s.models:
                catalog = catalog.only(s.models)
            accel = Acceleration.load(s.config("acceleration.toml"), catalog)
        except (ValueError, OSError, KeyError):
            return {}
        return {w: accel.load_profile(w).attention for w in sorted(catalog.weights_needed())}

    def weights(self) -> dict[str, tuple[str, Path | None]]:
        """Each weights entry: verified (pulled), real but unverified, demo, or missing; with its licence."""
        from weights.locate import LOCK_FILE, demo_weights_ready, read_lock, real_weights_ready
        from weights.manifest import load_manifest
        from weights.pull import PullError, verify

        s = self.settings
        states: dict[str, tuple[str, Path | None]] = {}
        for entry in load_manifest().values():
            real = s.resolved_weights_dir / entry.name
            demo = s.demo_weights_dir / entry.name
            licence = f"licence {entry.license}"
            if real_weights_ready(real):
                try:
                    verify(entry, real)
                    lock = read_lock(real)
                    states[entry.name] = ("verified", real)
                    self.add("weights", "ok", f"{entry.name}: verified real weights ({entry.repo}@"
                             f"{str(lock.get('commit', '?'))[:12]}), {licence}")
                except (PullError, OSError, ValueError) as exc:
                    states[entry.name] = ("broken", None)
                    self.add("weights", "error", f"{entry.name}: real weights in {real} do not verify: {exc}",
                             f"run `darkroom weights pull {entry.name}` again")
                continue
            if (real / "model_index.json").is_file() and not (real / LOCK_FILE).exists():
                self.add("weights", "warning", f"{entry.name}: {real} holds weights that were not pulled by darkroom "
                         "(no lock file), so they are not used", f"run `darkroom weights pull {entry.name}`")
            if s.demo != "never" and demo_weights_ready(demo, entry):
                states[entry.name] = ("demo", demo)
                self.add("weights", "ok", f"{entry.name}: demo weights (tiny, random: outputs are noise), {licence}")
            elif s.demo != "never":
                states[entry.name] = ("demo-to-build", None)
                self.add("weights", "ok", f"{entry.name}: missing; demo weights are built at first start, {licence}")
            else:
                states[entry.name] = ("missing", None)
                self.add("weights", "ok", f"{entry.name}: missing, {licence}")
        return states

    def models(self, devices: list[str], states: dict[str, tuple[str, Path | None]]) -> None:
        """Whether each configured id can run here at its default size: fits, needs offload, or cannot."""
        from server.acceleration_config import Acceleration
        from server.catalog import Catalog
        from server.dialects import ModelNames
        from weights.manifest import load_manifest

        s = self.settings
        manifest = load_manifest()
        try:
            catalog = Catalog.load(manifest, s.config("models.toml"), license_policy=s.license_policy)
            ModelNames.load(set(catalog.ids()) | set(catalog.video_ids()), s.config("dialects.toml"))
            Acceleration.load(s.config("acceleration.toml"), catalog)
            if s.models:
                catalog = catalog.only(s.models)
        except (ValueError, OSError, KeyError) as exc:
            self.add("models", "error", f"the configuration does not load: {exc}", "fix the file it names")
            return
        for spec in [*catalog.specs(), *catalog.video_specs()]:
            state, path = states.get(spec.weights, ("missing", None))
            if state in ("missing", "broken"):
                self.add("models", "error", f"{spec.id}: cannot run: no weights for {spec.weights} (demo mode is "
                         f"{s.demo!r})", f"run `darkroom weights pull {spec.weights}`, or allow demo weights "
                         "(--demo auto)")
                continue
            if path is None:
                self.add("models", "ok", f"{spec.id}: runs on demo weights built at first start")
                continue
            self.add("models", *self._fit(spec, manifest[spec.weights], path, state == "demo", devices))

    def _fit(self, spec: object, entry: object, path: Path, demo: bool,
             devices: list[str]) -> tuple[Level, str, str | None]:
        from pipelines.registry import family_class
        from server.engine.costs import load_costs
        from server.engine.policy import EVICTION_ORDERS, DeviceState, NeverFits, Placement, plan_residency
        from server.engine.worker import Worker, device_budget, resolve_dtype
        from weights.locate import LocatedWeights

        s = self.settings
        fam = family_class(spec.family)  # type: ignore[attr-defined]
        # On a CPU-only server a clip asked for without a resolution gets the draft tier (server/service.py).
        cpu_only = all(d.startswith("cpu") for d in devices)
        params = _default_params(spec, fam, draft=cpu_only)
        full = _default_params(spec, fam)
        activation = fam.activation_bytes(params, 1)
        located = {entry.name: LocatedWeights(entry, path, demo)}  # type: ignore[attr-defined]
        reserve = int(s.vram_reserve_gb * GB)
        limit = int(s.memory_limit_gb * GB) if s.memory_limit_gb else None
        transfer = load_costs(s.config("costs.toml")).transfer
        verdicts = []
        for dev in devices:
            budget = device_budget(dev, reserve, limit) if dev.startswith("cpu") or _present(dev) else None
            worker = Worker("doctor", dev, resolve_dtype(s.dtype, dev), located, budget)
            footprint = worker.footprint(entry.name)  # type: ignore[attr-defined]
            size = f"{params.width}x{params.height}" + (f"x{params.num_frames}f" if params.num_frames else "")
            where = f"{dev} at {size}"
            try:
                plan = plan_residency(DeviceState(dev, budget), footprint, activation, {}, EVICTION_ORDERS["lru"],
                                      transfer)
            except NeverFits as exc:
                verdicts.append(("error", f"cannot: needs {exc.need / GB:.1f} GB even with offload, {dev} has "
                                 f"{exc.have / GB:.1f} GB"))
                continue
            need = (footprint.bytes + activation) / GB
            ram = host_ram()
            if budget is None:
                level, text = _ram_verdict(where, need, ram, "on the CPU, weights and activations live in RAM")
                if full != params:  # the draft tier by default: say what the model's own default would need
                    full_need = (footprint.bytes + fam.activation_bytes(full, 1)) / GB
                    over, _why = _ram_verdict("", full_need, ram, "")
                    text += f" (the CPU's draft default; {full.width}x{full.height}x{full.num_frames}f, asked " \
                            f"for explicitly, needs ~{full_need:.1f} GB" + (", more than the machine has)" if over ==
                                                                               "error" else ")")
                    level = "warning" if over == "error" and level == "ok" else level
                verdicts.append((level, text))
            elif plan.placement is Placement.RESIDENT:
                verdicts.append(("ok", f"fits on {where} ({need:.1f} GB of {budget / GB:.1f} GB)"))
            else:
                level, text = _ram_verdict(where, footprint.bytes / GB, ram, "offloaded weights wait in host RAM")
                verdicts.append(("error" if level == "error" else "warning",
                                 f"needs offload on {where} ({plan.placement.value}: {need:.1f} GB > "
                                 f"{budget / GB:.1f} GB; slower){'' if level == 'ok' else '; ' + text}"))
        best = min(verdicts, key=lambda v: LEVELS.index(v[0]))
        name = f"{spec.id}{' (demo weights)' if demo else ''}"  # type: ignore[attr-defined]
        fix = None
        if best[0] == "error":
            fix = "use a GPU (or a machine) with more memory, lower the default tier in configs/models.toml, or " \
                  "leave the id out (--models)"
        return best[0], f"{name}: {'; '.join(v[1] for v in verdicts)}", fix  # type: ignore[return-value]

    def memory(self) -> None:
        """Host RAM: what the machine has, and whether the RAM tier the settings ask for fits in it."""
        ram = host_ram()
        if ram is None:
            self.add("memory", "warning", "host RAM could not be read (no /proc/meminfo)", None)
            return
        total, available = ram
        self.add("memory", "ok", f"host RAM: {total / GB:.1f} GB, {available / GB:.1f} GB available now")
        gpus = sum(d.startswith("cuda") for d in self._devices)
        parked = self.settings.offload_ram_gb * gpus
        if gpus and parked * GB > total:
            self.add("memory", "warning", f"offload_ram_gb {self.settings.offload_ram_gb:g} x {gpus} GPU(s) = "
                     f"{parked:g} GB of parked models is more than the machine's {total / GB:.1f} GB of RAM",
                     "lower --offload-ram-gb (models beyond it are dropped and reloaded from disk instead)")

    def disk(self, states: dict[str, tuple[str, Path | None]]) -> None:
        """Free space where outputs and the jobs database go (the data dir), and where real weights are pulled."""
        s = self.settings
        free, total = _disk(s.data_dir)
        text = f"data dir {s.data_dir}: {free / GB:.1f} GB free of {total / GB:.1f} GB"
        if free < s.min_free_mb * 1e6:
            self.add("disk", "error", text + f", below min_free_mb ({s.min_free_mb:g} MB): submissions are refused "
                     "with 507 storage_full", "free space in the data dir (or lower --min-free-mb)")
        elif free < _LOW_DISK_GB * GB:
            self.add("disk", "warning", text, f"outputs fill it at a few MB per image; keep {_LOW_DISK_GB:g} GB free "
                     "(or set --max-files-gb to cap outputs)")
        else:
            self.add("disk", "ok", text)
        missing = sorted(n for n, (state, _) in states.items() if state in ("demo", "demo-to-build", "missing"))
        weights_free, _total = _disk(s.resolved_weights_dir)
        if missing and weights_free < _LOW_DISK_GB * GB:
            self.add("disk", "warning", f"weights dir {s.resolved_weights_dir}: {weights_free / GB:.1f} GB free; "
                     f"{len(missing)} weights entr{'y is' if len(missing) == 1 else 'ies are'} not pulled yet "
                     f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}) and real weights take 10-80 GB "
                     "each", "free space there (or point --weights-dir at a larger disk) before pulling")
        retention = f"{s.retention_hours:g} h" if s.retention_hours else "kept until deleted"
        cap = f", capped at {s.max_files_gb:g} GB" if s.max_files_gb else ""
        self.add("disk", "ok", f"outputs and inputs expire after {retention}{cap}")

    def start_up(self) -> None:
        """Whether a server could start with these settings now: its port and its data dir free."""
        s = self.settings
        if s.port:
            try:
                with socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET) as sock:
                    sock.bind((s.host, s.port))
                self.add("start-up", "ok", f"port {s.port} on {s.host} is free")
            except OSError as exc:
                in_use = exc.errno == errno.EADDRINUSE
                self.add("start-up", "error", f"port {s.port} on {s.host} "
                         + ("is already in use (another darkroom, or another program)" if in_use else
                            f"cannot be bound: {exc.strerror}"),
                         "stop what holds it, or choose another --port" if in_use else "check --host")
        holder = _data_dir_holder(s.data_dir)
        if holder is None:
            self.add("start-up", "ok", f"data dir {s.data_dir} is not in use by another server")
        else:
            self.add("start-up", "error", f"data dir {s.data_dir} is in use by another darkroom server (pid "
                     f"{holder})", "stop that server, or choose another --data-dir")

    def sharing(self) -> None:
        """Whether front ends sharing a job store also share files."""
        s = self.settings
        if s.database_url is None:
            return
        try:
            s.check_file_sharing()
        except ValueError as exc:
            self.add("storage", "error", str(exc), "set DARKROOM_S3_BUCKET, or DARKROOM_SHARED_DATA_DIR=true on a "
                     "data dir every front end mounts")
            return
        where = f"bucket {s.s3_bucket}" if s.s3_bucket else f"shared data dir {s.data_dir}"
        self.add("storage", "ok", f"jobs in PostgreSQL, files in the {where}: every front end reads every job's files")

    def network(self) -> None:
        """Where the server would listen and who may call it."""
        s = self.settings
        keyed = s.api_key is not None or s.api_keys_file is not None
        try:
            s.check_bind_safety()
        except ValueError as exc:
            self.add("network", "error", str(exc), "set --api-key (or --api-keys-file), or bind to 127.0.0.1")
            return
        if s.host in ("127.0.0.1", "::1", "localhost"):
            self.add("network", "ok", f"listens on {s.host}:{s.port} (this machine only)"
                     + ("; API key required" if keyed else "; no API key (fine on loopback)"))
        else:
            self.add("network", "ok", f"listens on {s.host}:{s.port} with API key(s) required")
        if s.cors_origins:
            self.add("network", "ok", f"browsers may call from: {', '.join(s.cors_origins)}")
        if s.url_allowlist:
            self.add("network", "warning", f"image and webhook URLs may reach private addresses: "
                     f"{', '.join(s.url_allowlist)}", "allow only the hosts you trust")


def host_ram() -> tuple[int, int] | None:
    """(total, available) bytes of this machine's RAM, or None where /proc/meminfo cannot be read."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(info["MemTotal"].split()[0]) * 1024, int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _ram_verdict(where: str, need_gb: float, ram: tuple[int, int] | None, why: str) -> tuple[Level, str]:
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


def _present(dev: str) -> bool:
    import torch

    index = torch.device(dev).index or 0
    return torch.cuda.is_available() and index < torch.cuda.device_count()


def _default_params(spec: object, fam: type, draft: bool = False) -> object:
    """A request at the id's defaults (an edit of one source when it edits), at the default tier, square; a clip at
    the draft tier with `draft` (what a CPU-only server gives a request without a resolution)."""
    from pipelines.base import RenderParams, Task
    from server.catalog import QUALITY_LONG_SIDE, RESOLUTION_SHORT_SIDE, VideoModelSpec
    from server.service import DRAFT_TIER

    d = spec.defaults  # type: ignore[attr-defined]
    if isinstance(spec, VideoModelSpec):
        tier = DRAFT_TIER if draft and DRAFT_TIER in spec.resolutions else d.resolution
        short = RESOLUTION_SHORT_SIDE[tier]
        width, height = short * 16 // 9 // 16 * 16, short
        return RenderParams(task=Task.IMAGE_TO_VIDEO, prompt="doctor", width=width, height=height, num_images=1, seeds=(0,),
                            num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale, strength=1.0,
                            num_sources=1, num_frames=fam.valid_frames(d.duration * d.fps), fps=float(d.fps))
    side = QUALITY_LONG_SIDE[spec.default_quality]  # type: ignore[attr-defined]
    edits = spec.max_source_images > 0  # type: ignore[attr-defined]
    return RenderParams(task=Task.EDIT if edits else Task.GENERATE, prompt="doctor", width=side, height=side,
                        num_images=spec.default_num_images, seeds=(0,) * spec.default_num_images,  # type: ignore
                        num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale,
                        strength=d.strength, num_sources=1 if edits else 0)


def render(findings: list[Finding]) -> str:
    """The report as text: sections, then the problems with what to do."""
    marks = {"ok": "  ok   ", "warning": " WARN  ", "error": " ERROR "}
    lines: list[str] = []
    section = None
    for f in findings:
        if f.section != section:
            section = f.section
            lines.append(f"\n{section.upper()}")
        lines.append(f"{marks[f.level]} {f.text}")
    problems = [f for f in findings if f.level != "ok"]
    errors = sum(f.level == "error" for f in problems)
    lines.append(f"\n{errors} error(s) (something configured cannot work), {len(problems) - errors} warning(s) "
                 "(it works, slower or riskier than configured).")
    for f in problems:
        lines.append(f"{marks[f.level]} {f.text}" + (f"\n         → {f.fix}" if f.fix else ""))
    return "\n".join(lines).lstrip("\n")


def worst(findings: list[Finding]) -> Level:
    """The most severe level among `findings`."""
    return max((f.level for f in findings), key=LEVELS.index, default="ok")


def exit_status(findings: list[Finding]) -> int:
    """0 when everything is ok, 1 with warnings, 2 with errors."""
    return LEVELS.index(worst(findings))


def as_json(findings: list[Finding]) -> str:
    """The findings as JSON (for scripts and monitoring), with the same verdict as the exit status."""
    level = worst(findings)
    return json.dumps({"ok": level != "error", "worst": level, "exit_status": LEVELS.index(level),
                       "findings": [asdict(f) for f in findings]}, indent=2)
