"""Logging set-up: plain lines for people, or one JSON object per line (`--log-format json`) for log pipelines.

Records that describe something that happened (a request answered, a job accepted, claimed or finished) are
*events*: a name and fields (`event(...)`). In JSON each field is a top-level key; in text they follow the message
as `key=value` pairs (logfmt, which Loki's `| logfmt` and Elastic's kv processor read), so no field has to be
fished out of the prose with a regex. Every record carries the request id of the HTTP request it happened in and
the job id it is about.

Third-party libraries write through the same handler: transformers' and diffusers' loggers propagate to ours,
Python warnings are logged, and progress bars (tqdm) are off unless stderr is a terminal and the format is text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("darkroom_request_id", default=None)
"""The id of the HTTP request being handled (set by server/api/request_id.py)."""
_BARE = re.compile(r"^[A-Za-z0-9._:/@+-]+$")


def event(logger: logging.Logger, name: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `message` as event `name` with `fields` (None values are left out)."""
    logger.log(level, message, extra={"event": name, "fields": {k: v for k, v in fields.items() if v is not None}})


def _context(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(record, "event", None):
        out["event"] = record.event  # type: ignore[attr-defined]
    request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
    if request_id:
        out["request_id"] = request_id
    job_id = getattr(record, "job_id", None)
    if job_id:
        out["job_id"] = job_id
    out.update(getattr(record, "fields", None) or {})
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the event's name and fields, request_id, job_id
    (and an exception's text)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "request_id": None, "job_id": None}
        entry.update(_context(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...` (the event's fields, the request and job ids)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = " ".join(f"{k}={_logfmt(v)}" for k, v in _context(record).items())
        if not pairs:
            return line
        head, sep, trace = line.partition("\n")  # an exception's text stays below the line
        return f"{head} {pairs}{sep}{trace}"


def _logfmt(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    return text if _BARE.match(text) else json.dumps(text)


def configure(level: str, fmt: str) -> None:
    """Root logging for the server process (`fmt` is "text" or "json"). Progress bars of the libraries are turned
    off here (through their environment variables, before they are imported) unless a person watches a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    if fmt == "json" or not sys.stderr.isatty():
        for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "DIFFUSERS_NO_PROGRESS_BAR"):
            os.environ.setdefault(var, "1")


def route_library_logs() -> None:
    """transformers and diffusers log through their own handlers (their own format, their own stream); send their
    records to ours instead, and keep their progress bars off where ours are. Call once they are importable (the
    server imports them anyway to load models)."""
    bars_off = os.environ.get("TQDM_DISABLE") == "1"
    for name in ("transformers", "diffusers"):
        try:
            lib = __import__(f"{name}.utils.logging", fromlist=["logging"])
        except ImportError:
            continue
        lib.disable_default_handler()
        lib.enable_propagation()
        if bars_off:
            lib.disable_progress_bar()


def route_torch_logs() -> None:
    """torch puts its own handler on the "torch" logger when imported (its own line format, e.g. the
    torch.utils._pytree warnings torchao's import triggers) and stops propagation there; send its records to our
    handler instead. Called where a process imports torch to compute (local workers, before demo weights build)."""
    import torch  # noqa: F401 - importing it installs the handler this replaces

    torch_logger = logging.getLogger("torch")
    for handler in list(torch_logger.handlers):
        torch_logger.removeHandler(handler)
    torch_logger.propagate = True
