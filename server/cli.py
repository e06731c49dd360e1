"""The `darkroom` command: serve, and manage weights."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click
from pydantic import ValidationError

from server.settings import Settings


def _settings_options(func: Any) -> Any:
    """One `--flag` per Settings field, so every flag maps to exactly one setting (and its DARKROOM_ env var)."""
    for name, info in reversed(list(Settings.model_fields.items())):
        flag = "--" + name.replace("_", "-")
        help_text = f"{info.description} [env DARKROOM_{name.upper()}]"
        func = click.option(flag, name, default=None, help=help_text)(func)
    return func


def _build_settings(given: dict[str, Any]) -> Settings:
    try:
        return Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise click.UsageError(f"setting {where}: {first['msg']}") from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if level != "debug":
        # The libraries' dtype notices drown the server's own log. Set through their environment variables:
        # importing them here would delay the server's first answer by seconds.
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@click.group()
def main() -> None:
    """darkroom: self-hosted image editing behind the hosted platforms' APIs."""


@main.command()
@_settings_options
def serve(**given: Any) -> None:
    """Start the HTTP server (builds demo weights first when no real weights are present)."""
    settings = _build_settings(given)
    try:
        settings.check_bind_safety()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _configure_logging(settings.log_level)
    if settings.supervise:
        from server.supervisor import child_command, supervise

        sys.exit(supervise(child_command(sys.argv[1:])))
    import uvicorn

    from server.app import create_app
    from server.jobs.lock import DataDirBusy
    from server.lifecycle import RESTART_EXIT_CODE, DrainingServer

    try:
        app = create_app(settings)
    except (DataDirBusy, ValueError, OSError) as exc:  # a busy data dir, a bad keys or config file
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    lifecycle = app.state.lifecycle
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=settings.log_level == "debug", timeout_graceful_shutdown=10)
    server = DrainingServer(config, lifecycle)
    lifecycle.on_exit(server.exit_now)
    logging.getLogger("darkroom").info("listening on http://%s:%d", settings.host, settings.port)
    server.run()
    # The jobs database is closed and committed by now and every thread left is a daemon. Skip interpreter
    # teardown: a worker thread stuck in native code (a hung or faulted one) would abort it, and tearing down
    # torch's and diffusers' module graph adds about 2 s to every stop for nothing.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(RESTART_EXIT_CODE if lifecycle.restart else 0)



@main.group()
def weights() -> None:
    """List, pull and build model weights."""


@weights.command("list")
@_settings_options
def weights_list(**given: Any) -> None:
    """Every weights entry: repo, revision, licence, and whether real or demo weights are on disk."""
    from weights.locate import demo_weights_ready, real_weights_ready
    from weights.manifest import load_manifest

    settings = _build_settings(given)
    for entry in load_manifest().values():
        real = real_weights_ready(settings.resolved_weights_dir / entry.name)
        demo = demo_weights_ready(settings.demo_weights_dir / entry.name, entry)
        state = "real" if real else "demo" if demo else "missing"
        pin = entry.revision if entry.revision_pinned else f"{entry.revision} (unpinned)"
        click.echo(f"{entry.name:20} {state:8} {entry.repo}@{pin}  [{entry.license}]")


@weights.command("pull")
@click.argument("name")
@click.option("--token", default=None, envvar="HF_TOKEN", help="Hugging Face token for gated repos [env HF_TOKEN].")
@_settings_options
def weights_pull(name: str, token: str | None, **given: Any) -> None:
    """Download NAME's safetensors from the Hugging Face Hub and verify them."""
    from weights.manifest import load_manifest
    from weights.pull import PullError, pull

    settings = _build_settings(given)
    manifest = load_manifest()
    if name not in manifest:
        raise click.UsageError(f"unknown weights {name!r}; known: {', '.join(sorted(manifest))}")
    try:
        path = pull(manifest[name], settings.resolved_weights_dir, token)
    except PullError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"pulled {name} into {path}")


@weights.command("demo")
@click.option("--force", is_flag=True, help="Rebuild even if present.")
@_settings_options
def weights_demo(force: bool, **given: Any) -> None:
    """Build tiny random-weight versions of every family (real classes, saved with save_pretrained)."""
    from weights.demo import build_demo
    from weights.manifest import load_manifest

    settings = _build_settings(given)
    for entry in load_manifest().values():
        path = build_demo(entry, settings.demo_weights_dir, force=force)
        click.echo(f"demo {entry.name} ({entry.family}) -> {path}")
