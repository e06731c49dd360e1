"""`darkroom doctor`: what this machine and configuration can serve, and what to do about what it cannot.

Reads the same settings and configs/ files the server would, never starts it and never loads a model: devices
and versions, attention backends and fp8, each weights entry on disk, whether each configured id fits (at its
default size, from the safetensors headers and the memory formulas admission uses), disk space, and the bind/auth
situation. Each finding is ok, warn or fail; a fail means something configured cannot work (exit status 1).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

from server.settings import Settings

Level = Literal["ok", "warn", "fail"]
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
        self.disk()
        self.sharing()
        self.network()
        return self.findings

    def devices(self) -> list[str]:
        """GPUs with memory and compute capability; the device list the server would use."""
        import torch

        from server.engine.worker import resolve_devices

        devices = resolve_devices(self.settings.device)
        for dev in devices:
            if not dev.startswith("cuda"):
                self.add("devices", "warn", f"{dev}: no CUDA device; renders run on the CPU (demo sizes only)",
                         "install the NVIDIA driver and a CUDA build of torch (see Dockerfile.cuda)")
                continue
            index = torch.device(dev).index or 0
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                self.add("devices", "fail", f"{dev} is configured but not present "
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
            self.add("versions", "warn", "a GPU is present but this torch build has no CUDA",
                     "install a CUDA build of torch 2.13 (see Dockerfile.cuda)")

    def acceleration(self, devices: list[str]) -> None:
        """Attention backends and fp8 per device."""
        from pipelines.acceleration import ATTENTION_BACKENDS, choose_attention, choose_fp8

        for dev in devices:
            usable = []
            why_not = []
            for backend in ATTENTION_BACKENDS:
                chosen, reasons = choose_attention((backend,), dev, dispatches=True)
                if chosen == backend:
                    usable.append(backend)
                else:
                    why_not += reasons
            fp8, reason = choose_fp8("prefer", dev)
            self.add("acceleration", "ok", f"{dev}: attention backends usable: {', '.join(usable)}; fp8: "
                     f"{'yes' if fp8 else 'no (' + str(reason) + ')'}")
            for line in why_not:
                self.add("acceleration", "ok", f"{dev}: not usable: {line}")

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
                    self.add("weights", "fail", f"{entry.name}: real weights in {real} do not verify: {exc}",
                             f"run `darkroom weights pull {entry.name}` again")
                continue
            if (real / "model_index.json").is_file() and not (real / LOCK_FILE).exists():
                self.add("weights", "warn", f"{entry.name}: {real} holds weights that were not pulled by darkroom "
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
            self.add("models", "fail", f"the configuration does not load: {exc}", "fix the file it names")
            return
        for spec in [*catalog.specs(), *catalog.video_specs()]:
            state, path = states.get(spec.weights, ("missing", None))
            if state in ("missing", "broken"):
                self.add("models", "fail", f"{spec.id}: cannot run: no weights for {spec.weights} (demo mode is "
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
        params = _default_params(spec, fam)
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
                verdicts.append(("fail", f"cannot: needs {exc.need / GB:.1f} GB even with offload, {dev} has "
                                 f"{exc.have / GB:.1f} GB"))
                continue
            need = (footprint.bytes + activation) / GB
            if budget is None:
                verdicts.append(("ok", f"fits on {where} (no device budget on the CPU; ~{need:.1f} GB of RAM)"))
            elif plan.placement is Placement.RESIDENT:
                verdicts.append(("ok", f"fits on {where} ({need:.1f} GB of {budget / GB:.1f} GB)"))
            else:
                verdicts.append(("warn", f"needs offload on {where} ({plan.placement.value}: {need:.1f} GB > "
                                 f"{budget / GB:.1f} GB; slower)"))
        best = min(verdicts, key=lambda v: ["ok", "warn", "fail"].index(v[0]))
        name = f"{spec.id}{' (demo weights)' if demo else ''}"  # type: ignore[attr-defined]
        fix = None
        if best[0] == "fail":
            fix = "use a GPU with more memory, lower the default tier in configs/models.toml, or leave the id out " \
                  "(--models)"
        return best[0], f"{name}: {'; '.join(v[1] for v in verdicts)}", fix  # type: ignore[return-value]

    def disk(self) -> None:
        """Free space where the data dir (outputs, weights) lives."""
        path = self.settings.data_dir
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        usage = shutil.disk_usage(probe)
        free = usage.free / GB
        text = f"{path}: {free:.1f} GB free of {usage.total / GB:.1f} GB"
        if free < 1:
            self.add("disk", "fail", text, "free space: outputs and the jobs database cannot be written")
        elif free < _LOW_DISK_GB:
            self.add("disk", "warn", text, f"real weights take 20-80 GB each; keep at least {_LOW_DISK_GB:g} GB free "
                     "(or set --max-files-gb to cap outputs)")
        else:
            self.add("disk", "ok", text)
        retention = f"{self.settings.retention_hours:g} h" if self.settings.retention_hours else "kept until deleted"
        cap = f", capped at {self.settings.max_files_gb:g} GB" if self.settings.max_files_gb else ""
        self.add("disk", "ok", f"outputs and inputs expire after {retention}{cap}")

    def sharing(self) -> None:
        """Whether front ends sharing a job store also share files."""
        s = self.settings
        if s.database_url is None:
            return
        try:
            s.check_file_sharing()
        except ValueError as exc:
            self.add("storage", "fail", str(exc), "set DARKROOM_S3_BUCKET, or DARKROOM_SHARED_DATA_DIR=true on a "
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
            self.add("network", "fail", str(exc), "set --api-key (or --api-keys-file), or bind to 127.0.0.1")
            return
        if s.host in ("127.0.0.1", "::1", "localhost"):
            self.add("network", "ok", f"listens on {s.host}:{s.port} (this machine only)"
                     + ("; API key required" if keyed else "; no API key (fine on loopback)"))
        else:
            self.add("network", "ok", f"listens on {s.host}:{s.port} with API key(s) required")
        if s.cors_origins:
            self.add("network", "ok", f"browsers may call from: {', '.join(s.cors_origins)}")
        if s.url_allowlist:
            self.add("network", "warn", f"image and webhook URLs may reach private addresses: "
                     f"{', '.join(s.url_allowlist)}", "allow only the hosts you trust")


def _present(dev: str) -> bool:
    import torch

    index = torch.device(dev).index or 0
    return torch.cuda.is_available() and index < torch.cuda.device_count()


def _default_params(spec: object, fam: type) -> object:
    """A request at the id's defaults (an edit of one source when it edits), at the default tier, square."""
    from pipelines.base import RenderParams, Task
    from server.catalog import QUALITY_LONG_SIDE, RESOLUTION_SHORT_SIDE, VideoModelSpec

    d = spec.defaults  # type: ignore[attr-defined]
    if isinstance(spec, VideoModelSpec):
        short = RESOLUTION_SHORT_SIDE[d.resolution]
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
    marks = {"ok": "  ok  ", "warn": " WARN ", "fail": " FAIL "}
    lines: list[str] = []
    section = None
    for f in findings:
        if f.section != section:
            section = f.section
            lines.append(f"\n{section.upper()}")
        lines.append(f"{marks[f.level]} {f.text}")
    problems = [f for f in findings if f.level != "ok"]
    fails = sum(f.level == "fail" for f in problems)
    lines.append(f"\n{fails} problem(s) that stop something configured from working, "
                 f"{len(problems) - fails} warning(s).")
    for f in problems:
        lines.append(f"{marks[f.level]} {f.text}" + (f"\n        → {f.fix}" if f.fix else ""))
    return "\n".join(lines).lstrip("\n")


def as_json(findings: list[Finding]) -> str:
    """The findings as JSON (for scripts and monitoring)."""
    return json.dumps({"ok": not any(f.level == "fail" for f in findings),
                       "findings": [asdict(f) for f in findings]}, indent=2)
