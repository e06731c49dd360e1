"""The `darkroom` command: serve, check the machine (doctor), compare against a hosted provider, manage weights."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import click
from pydantic import SecretStr, ValidationError

from server.settings import Settings
from server.version import __version__

if TYPE_CHECKING:
    from server.config import DarkroomConfig

_WEIGHTS_SETTINGS = ("data_dir", "weights_dir", "demo_weights_path", "config_dir")
"""The settings the weights commands read (serve takes every setting)."""


def _click_type(annotation: Any) -> tuple[Any, str | None]:
    """(click type, metavar) for a Settings annotation: Literal -> a choice, Path, int, float, bool, or a
    comma-separated list; None is dropped (unset is the flag's absence)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    origin = get_origin(annotation)
    if origin is Annotated:
        return _click_type(args[0])
    if origin is Literal:
        return click.Choice([str(a) for a in args]), None
    if origin in (Union, UnionType) and len(args) == 1:
        return _click_type(args[0])
    if origin is list:
        return str, "A,B,..."
    if annotation is SecretStr:
        return str, "SECRET"
    if annotation is Path:
        return click.Path(path_type=Path), "PATH"
    return {bool: click.BOOL, int: int, float: float}.get(annotation, str), None


def _default_text(name: str, info: Any) -> str:
    if info.annotation is SecretStr or get_args(info.annotation)[:1] == (SecretStr,):
        return "unset"
    default = info.get_default(call_default_factory=True)
    if default is None or default == []:
        return "unset"
    return str(default)


def _settings_options(only: tuple[str, ...] | None = None) -> Any:
    """One `--flag` per Settings field (or the `only` ones), so every flag maps to exactly one setting and its
    DARKROOM_ environment variable; the help shows its type, default and variable."""

    def decorate(func: Any) -> Any:
        for name, info in reversed(list(Settings.fields().items())):
            if only is not None and name not in only:
                continue
            kind, metavar = _click_type(info.annotation)
            help_text = f"{info.description} [default: {_default_text(name, info)}; env DARKROOM_{name.upper()}]"
            # No click default: an absent flag must leave the environment's (or the field's) value in force.
            func = click.option("--" + name.replace("_", "-"), name, type=kind, metavar=metavar, default=None,
                                help=help_text)(func)
        return func

    return decorate


def _build_settings(given: dict[str, Any]) -> Settings:
    try:
        return Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise click.UsageError(f"setting {where}: {first['msg']}") from None


def _configure_logging(level: str, fmt: str = "text") -> None:
    from server.logs import configure

    configure(level, fmt)
    if level != "debug":
        # The libraries' dtype notices drown the server's own log. Set through their environment variables:
        # importing them here would delay the server's first answer by seconds.
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class _DialectChoice(click.Choice):
    """The dialects `darkroom compare` speaks, from the registered dialects (read when first needed: the CLI
    starts without importing the HTTP layer)."""

    def __init__(self) -> None:
        super().__init__([])

    @property  # type: ignore[override]
    def choices(self) -> list[str]:
        from server.api.registry import compare_dialects

        return list(compare_dialects())

    @choices.setter
    def choices(self, _value: object) -> None:
        pass


@click.group(context_settings={"max_content_width": 120})
@click.version_option(__version__, prog_name="darkroom")
def main() -> None:
    """darkroom: self-hosted image editing behind the hosted platforms' APIs."""


@main.command()
@_settings_options()
def serve(**given: Any) -> None:
    """Start the HTTP server (builds demo weights first when no real weights are present)."""
    settings = _build_settings(given)
    try:
        settings.check_bind_safety()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _configure_logging(settings.server.log_level, settings.server.log_format)
    if settings.server.supervise:
        from server.supervisor import child_command, supervise

        sys.exit(supervise(child_command(sys.argv[1:])))
    import uvicorn

    from server.app import create_app
    from server.jobs.lock import DataDirBusy
    from server.lifecycle import RESTART_EXIT_CODE, DrainingServer

    try:
        app = create_app(settings)
    except (DataDirBusy, ValueError, OSError) as exc:  # a busy data dir, a bad keys or config file
        # Through the log, so that with --log-format json even this line is JSON.
        logging.getLogger("darkroom").error("cannot start: %s", exc)
        sys.exit(1)
    lifecycle = app.state.lifecycle
    # log_config=None: uvicorn's records go through the root handler set above (text or JSON alike).
    # No uvicorn access log: every request is one structured `request` event (server/api/access_log.py).
    config = uvicorn.Config(app, host=settings.server.host, port=settings.server.port, log_level=settings.server.log_level,
                            access_log=False, timeout_graceful_shutdown=10, log_config=None)
    server = DrainingServer(config, lifecycle)
    lifecycle.on_exit(server.exit_now)
    url = f"http://{settings.server.host}:{settings.server.port}"
    logging.getLogger("darkroom").info("listening on %s: the studio is at %s/ and the API docs at %s/docs", url, url,
                                       url)
    server.run()
    # The jobs database is closed and committed by now and every thread left is a daemon. Skip interpreter
    # teardown: a worker thread stuck in native code (a hung or faulted one) would abort it, and tearing down
    # torch's and diffusers' module graph adds about 2 s to every stop for nothing.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(RESTART_EXIT_CODE if lifecycle.restart else 0)



@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@_settings_options()
def doctor(as_json: bool, **given: Any) -> None:
    """Check what this machine and configuration can serve: GPUs, versions, attention and fp8, weights, whether
    each configured id fits (GPU memory and host RAM), disk, the port and data dir, bind and auth. Each finding is
    ok, warning or error; the exit status follows the worst: 0, 1 or 2 (with --json too)."""
    _configure_logging("error")
    from server.doctor import Doctor, exit_status, render
    from server.doctor import as_json as findings_json

    findings = Doctor(_build_settings(given)).run()
    click.echo(findings_json(findings) if as_json else render(findings))
    sys.exit(exit_status(findings))


@main.command()
@click.option("--payloads", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="JSONL or YAML file of payloads (model, prompt, images, params; see README).")
@click.option("--a", "a_url", required=True, metavar="URL", help="Side A's base URL (typically the hosted provider).")
@click.option("--a-key", metavar="ENV", help="Environment variable holding side A's API key.")
@click.option("--a-name", default="hosted", show_default=True, help="Side A's name in the report.")
@click.option("--a-cost", type=click.Choice(["table", "gpu"]), default="table", show_default=True,
              help="Side A's cost: the price table, or GPU $/h × measured seconds.")
@click.option("--b", "b_url", required=True, metavar="URL", help="Side B's base URL (typically darkroom).")
@click.option("--b-key", metavar="ENV", help="Environment variable holding side B's API key.")
@click.option("--b-name", default="darkroom", show_default=True, help="Side B's name in the report.")
@click.option("--b-cost", type=click.Choice(["table", "gpu"]), default="gpu", show_default=True,
              help="Side B's cost basis.")
@click.option("--dialect", type=_DialectChoice(), default="qolaba", show_default=True, help="The API both sides are spoken to in (a payload may name "
              "its own).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the report, the outputs and the resume record.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Requests in flight per side.")
@click.option("--repeats", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Times each payload is sent to each side.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 7200), default=600, show_default=True,
              help="Seconds one request may take, outputs downloaded.")
@click.option("--poll", "poll_s", type=click.FloatRange(0.05, 60), default=0.5, show_default=True,
              help="Seconds between status polls.")
@click.option("--prices", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Price table [default: configs/prices.toml].")
@click.option("--gpu-usd-per-hour", type=click.FloatRange(0), default=None, envvar="DARKROOM_GPU_USD_PER_HOUR",
              help="What one local GPU costs per hour (owned: amortised price + hosting) [env "
              "DARKROOM_GPU_USD_PER_HOUR].")
@click.option("--gpus", type=click.IntRange(1, 64), default=1, show_default=True,
              help="GPUs the local side runs on.")
@click.option("--gpu-watts", type=click.FloatRange(0), default=None, help="Power per GPU under load, for electricity.")
@click.option("--usd-per-kwh", type=click.FloatRange(0), default=None, help="Electricity price.")
@click.option("--retry-failed", is_flag=True, help="On a resumed run, send failed requests again.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--stop-after-auth-failures", type=click.IntRange(0), default=3, show_default=True,
              help="Send a side nothing more after this many 401/403 answers in a row (a wrong key); 0: never stop.")
def compare(payloads: Path, a_url: str, a_key: str | None, a_name: str, a_cost: str, b_url: str, b_key: str | None,
            b_name: str, b_cost: str, dialect: str, out: Path, concurrency: int, repeats: int, timeout_s: float,
            poll_s: float, prices: Path | None, gpu_usd_per_hour: float | None, gpus: int, gpu_watts: float | None,
            usd_per_kwh: float | None, retry_failed: bool, no_progress: bool, stop_after_auth_failures: int) -> None:
    """Send the same payloads to two endpoints speaking a hosted dialect (typically a hosted provider and
    darkroom); write a self-contained HTML report (outputs side by side, latency plots, cost) and JSON. A re-run
    into the same --out resumes: payloads already done are not sent again."""
    import asyncio

    from compare.payloads import PayloadError, load_payloads
    from compare.prices import GpuCost, PriceTable
    from compare.report import build_summary, write
    from compare.runner import RunConfig, Side, run
    from server.api.registry import compare_dialects

    def key_of(env: str | None, side: str) -> str | None:
        if env is None:
            return None
        value = os.environ.get(env)
        if not value:
            raise click.UsageError(f"--{side}-key names {env}, which is not set in the environment")
        return value

    try:
        items = load_payloads(payloads)
        table = PriceTable.load(prices or Settings().engine.config_dir / "prices.toml")
    except (PayloadError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    cfg = RunConfig(payloads=items, dialect=dialect, out=out, prices=table,
                    sides=(Side("a", a_name, a_url, key_of(a_key, "a"), a_cost),  # type: ignore[arg-type]
                           Side("b", b_name, b_url, key_of(b_key, "b"), b_cost)),  # type: ignore[arg-type]
                    gpu=GpuCost(gpu_usd_per_hour, gpus, gpu_watts, usd_per_kwh), concurrency=concurrency,
                    repeats=repeats, timeout_s=timeout_s, poll_s=poll_s, retry_failed=retry_failed,
                    progress=not no_progress, stop_after_auth_failures=stop_after_auth_failures,
                    clients=compare_dialects())
    records, envs = asyncio.run(run(cfg))
    summary = build_summary(cfg, records, envs)
    json_path, html_path = write(cfg, summary)
    def seconds(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f} s"

    for label, side in summary["sides"].items():
        s = side["summary"]
        cost = s["cost"]["usd_per_image"]
        click.echo(f"{side['name']:>12}: {s['ok']}/{s['requests']} ok, p50 {seconds(s['latency_s']['p50'])}, "
                   f"p95 {seconds(s['latency_s']['p95'])}, {'—' if cost is None else f'${cost:.4f}'} per output"
                   + (f"\n{'':>14}{envs[label]['stopped']}" if envs[label].get("stopped") else ""))
    click.echo(f"report: {html_path}\nnumbers: {json_path}")


@main.group()
def weights() -> None:
    """List, pull and build model weights."""


def _config(settings: Settings) -> DarkroomConfig:
    """The config dir the settings name, read through the one config object (a clear error when it is broken)."""
    from server.config import DarkroomConfig

    try:
        return DarkroomConfig.load(settings.engine.config_dir, settings.engine.license_policy)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@weights.command("list")
@_settings_options(_WEIGHTS_SETTINGS)
def weights_list(**given: Any) -> None:
    """Every weights entry: repo, revision, licence, and whether real or demo weights are on disk."""
    from weights.locate import demo_weights_ready, real_weights_ready

    settings = _build_settings(given)
    for entry in _config(settings).manifest.values():
        real = real_weights_ready(settings.files.resolved_weights_dir / entry.name)
        demo = demo_weights_ready(settings.files.demo_weights_dir / entry.name, entry)
        state = "real" if real else "demo" if demo else "missing"
        pin = entry.revision if entry.revision_pinned else f"{entry.revision} (unpinned)"
        click.echo(f"{entry.name:20} {state:8} {entry.repo}@{pin}  [{entry.license}]")


@weights.command("pull")
@click.argument("name")
@click.option("--token", default=None, envvar="HF_TOKEN", help="Hugging Face token for gated repos [env HF_TOKEN].")
@click.option("--variant", default=None, help="Pull a weight variant read from its own files (GGUF, Nunchaku) "
              "into <name>/variants/<variant>; the manifest lists them. Variants made at load (fp8, int8, nf4) "
              "need no pull.")
@_settings_options(_WEIGHTS_SETTINGS)
def weights_pull(name: str, token: str | None, variant: str | None, **given: Any) -> None:
    """Download NAME's safetensors (or one of its variants' files) from the Hugging Face Hub and verify them."""
    from weights.pull import PullError, pull, pull_variant

    settings = _build_settings(given)
    manifest = _config(settings).manifest
    if name not in manifest:
        raise click.UsageError(f"unknown weights {name!r}; known: {', '.join(sorted(manifest))}")
    try:
        if variant is not None:
            path = pull_variant(manifest[name], variant, settings.files.resolved_weights_dir, token, say=click.echo)
        else:
            path = pull(manifest[name], settings.files.resolved_weights_dir, token, say=click.echo)
    except PullError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"pulled {name}{f' ({variant})' if variant else ''} into {path}")


@weights.command("demo")
@click.option("--force", is_flag=True, help="Rebuild even if present.")
@_settings_options(_WEIGHTS_SETTINGS)
def weights_demo(force: bool, **given: Any) -> None:
    """Build tiny random-weight versions of every family (real classes, saved with save_pretrained)."""
    from weights.demo import build_demo

    settings = _build_settings(given)
    for entry in _config(settings).manifest.values():
        path = build_demo(entry, settings.files.demo_weights_dir, force=force)
        click.echo(f"demo {entry.name} ({entry.family}) -> {path}")


@main.group()
def loras() -> None:
    """Fetch LoRA adapters into the server's LoRA folder (DARKROOM_LORA_DIR)."""


@loras.command("pull")
@click.argument("repo")
@click.option("--file", "filename", default=None, help="The .safetensors file in the repo (default: its only one).")
@click.option("--revision", default=None, help="A commit, branch or tag (default: main).")
@click.option("--name", default=None, help="The adapter's name in the folder (default: the repo's name).")
@click.option("--token", default=None, envvar="HF_TOKEN", help="Hugging Face token for gated repos [env HF_TOKEN].")
@_settings_options(("lora_dir", "config_dir"))
def loras_pull(repo: str, filename: str | None, revision: str | None, name: str | None, token: str | None,
               **given: Any) -> None:
    """Download a LoRA (.safetensors only) from the Hugging Face Hub into the LoRA folder, checked as an upload is
    (pickles refused, the layout and rank read from its header)."""
    from weights.lora_pull import LoraPullError, pull_lora

    settings = _build_settings(given)
    if settings.files.lora_dir is None:
        raise click.UsageError("set --lora-dir (DARKROOM_LORA_DIR): the folder the server reads adapters from")
    try:
        path, header = pull_lora(repo, settings.files.lora_dir, filename, revision, name, token)
    except LoraPullError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"pulled {repo} into {path} ({header.layout} layout, rank {header.rank}, {len(header.layers)} "
               f"layers); requests name it as {{\"id\": \"{path.stem}\"}}")
