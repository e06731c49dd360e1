"""Helpers shared by the tests: images, a real server subprocess, a loopback image host."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from benchmarks.harness import REPO, ServerProcess, free_port

__all__ = ["REPO", "ServerProcess", "data_url", "decode_png_size", "free_port", "image_host", "png_bytes",
           "task_when_done"]


def task_when_done(client: Any, task_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """GET /api/v1/tasks/{task_id} until it leaves pending/processing (or `timeout` passes); its last view."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}").json()
    while view["status"] in ("pending", "processing") and time.monotonic() < deadline:
        time.sleep(0.1)
        view = client.get(f"/api/v1/tasks/{task_id}").json()
    return view


def png_bytes(size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (200, 40, 40), mode: str = "RGB") -> bytes:
    """A small solid PNG."""
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 255).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    """bytes -> data:<mime>;base64,..."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class _ImageHandler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.hits.append(self.path)
        status, headers, body = self.routes.get(self.path, (404, {}, b"not found"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def image_host(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> Iterator[tuple[str, list[str]]]:
    """Serve fixed routes on 127.0.0.1; yields (base URL, list of paths requested)."""
    handler = type("Handler", (_ImageHandler,), {"routes": routes, "hits": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def decode_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image."""
    with Image.open(io.BytesIO(data)) as im:
        return im.size
