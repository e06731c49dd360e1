"""The `darkroom` command: serve, and manage weights."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import click
from pydantic import SecretStr, ValidationError

from server.settings import Settings
from server.version import __version__

_WEIGHTS_SETTINGS = ("data_dir", "weights_dir", "demo_weights_path")
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
        for name, info in reversed(list(Settings.model_fields.items())):
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
    _configure_logging(settings.log_level, settings.log_format)
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
    # log_config=None: uvicorn's records go through the root handler set above (text or JSON alike).
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=settings.log_level == "debug", timeout_graceful_shutdown=10,
                            log_config=None)
    server = DrainingServer(config, lifecycle)
    lifecycle.on_exit(server.exit_now)
    url = f"http://{settings.host}:{settings.port}"
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



@main.group()
def weights() -> None:
    """List, pull and build model weights."""


@weights.command("list")
@_settings_options(_WEIGHTS_SETTINGS)
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
@_settings_options(_WEIGHTS_SETTINGS)
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
@_settings_options(_WEIGHTS_SETTINGS)
def weights_demo(force: bool, **given: Any) -> None:
    """Build tiny random-weight versions of every family (real classes, saved with save_pretrained)."""
    from weights.demo import build_demo
    from weights.manifest import load_manifest

    settings = _build_settings(given)
    for entry in load_manifest().values():
        path = build_demo(entry, settings.demo_weights_dir, force=force)
        click.echo(f"demo {entry.name} ({entry.family}) -> {path}")
