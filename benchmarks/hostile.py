"""Hostile inputs, generated on the spot: an image corpus and an SSRF battery with loopback canaries.

Shared by tests/integration/test_hostile.py (which asserts every expected answer) and benchmarks/reliability.py
(which counts crashes, 5xx and canary hits for benchmarks/results/reliability.json). Every network target is a
loopback address: private, link-local and metadata addresses are covered by the address check's unit tests.
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
from PIL import Image


@dataclass(frozen=True)
class Hostile:
    """One corpus entry: bytes, the content type a client claims, and the answer darkroom must give."""

    name: str
    data: bytes
    claimed_type: str
    expect: int | None  # None: a normal result (200)
    code: str | None = None


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int, idat: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat or zlib.compress(b"\0"))
            + _png_chunk(b"IEND", b""))


def _zero_png(width: int, height: int) -> bytes:
    """A real greyscale PNG of zeros: tiny on the wire, width*height bytes once decoded."""
    row = b"\0" * (width + 1)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return _png_header_only(width, height, idat)


def _enc(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _gif_frames(n: int) -> bytes:
    """A 1x1 GIF with `n` frames, written by hand (Pillow would merge identical frames)."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = (b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control: 100 ms
             + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00")
    return head + frame * n + b"\x3b"


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _enc(Image.new("RGB", (96, 48), (20, 120, 200)), "JPEG", exif=exif.tobytes())


def _ztxt_bomb() -> bytes:
    good = _enc(Image.new("RGB", (16, 16)), "PNG")
    bomb = _png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"A" * 16_000_000, 9))
    return good[:33] + bomb + good[33:]


def corpus() -> list[Hostile]:
    """Every hostile case and the answer it must get (built in about a second)."""
    png = _enc(Image.new("RGB", (96, 64), (200, 40, 40)), "PNG")
    jpeg = _enc(Image.new("RGB", (96, 64), (40, 200, 40)), "JPEG")
    webp = _enc(Image.new("RGB", (96, 64), (40, 40, 200)), "WEBP")
    return [
        Hostile("zero-byte", b"", "image/png", 422, "invalid_image"),
        Hostile("truncated png", png[: len(png) // 2], "image/png", 422, "invalid_image"),
        Hostile("truncated jpeg", jpeg[: len(jpeg) // 2], "image/jpeg", 422, "invalid_image"),
        Hostile("header bomb 100000x100000", _png_header_only(100_000, 100_000), "image/png", 413, "image_too_large"),
        Hostile("pixel bomb 6000x6000 (under Pillow's warning)", _zero_png(6000, 6000), "image/png", 413,
                "image_too_large"),
        Hostile("pixel bomb 9500x9500 (over Pillow's warning)", _zero_png(9500, 9500), "image/png", 413,
                "image_too_large"),
        Hostile("1x20000 strip", _zero_png(1, 20_000), "image/png", 413, "image_too_large"),
        Hostile("zTXt decompression bomb", _ztxt_bomb(), "image/png", 422, "invalid_image"),
        Hostile("svg", b"<svg xmlns='http://www.w3.org/2000/svg' width='9e9' height='9e9'/>", "image/svg+xml", 422,
                "invalid_image"),
        Hostile("bmp", _enc(Image.new("RGB", (8, 8)), "BMP"), "image/bmp", 415, "unsupported_media_type"),
        Hostile("png+zip polyglot", png + b"PK\x03\x04" + b"\0" * 64, "image/png", 422, "invalid_image"),
        Hostile("webp with trailing html", webp + b"<script>alert(1)</script>", "image/webp", 422, "invalid_image"),
        Hostile("html", b"<!doctype html><img src=x onerror=alert(1)>", "image/png", 422, "invalid_image"),
        Hostile("10000-frame gif", _gif_frames(10_000), "image/gif", None),
        Hostile("cmyk jpeg", _enc(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"), "image/jpeg", None),
        Hostile("16-bit png", _enc(Image.new("I;16", (64, 64), 40000), "PNG"), "image/png", None),
        Hostile("palette png", _enc(Image.new("P", (64, 64), 3), "PNG"), "image/png", None),
        Hostile("rgba png", _enc(Image.new("RGBA", (64, 64), (255, 0, 0, 0)), "PNG"), "image/png", None),
        Hostile("greyscale+alpha png", _enc(Image.new("LA", (64, 64), (90, 128)), "PNG"), "image/png", None),
        Hostile("exif orientation 3", _exif_jpeg(3), "image/jpeg", None),
        Hostile("exif orientation 6", _exif_jpeg(6), "image/jpeg", None),
        Hostile("exif orientation 8", _exif_jpeg(8), "image/jpeg", None),
        Hostile("png claimed as jpeg", png, "image/jpeg", None),
        Hostile("jpeg claimed as text/plain", jpeg, "text/plain", None),
        Hostile("jpeg with camera trailer", jpeg + b"\0" * 32 + b"trailer", "image/jpeg", None),
    ]


TRANSPORTS = ("url", "data_url", "multipart")


def submit(client: httpx.Client, index: int, transport: str, url_base: str, model: str) -> httpx.Response:
    """Send corpus case `index` as the source image by `transport` (the URL route serves it from `url_base`).

    Asynchronous: inputs are fetched and decoded before the 202, so a refusal comes back at once and an accepted
    case is then waited for (its jobs batch together)."""
    case = shared_corpus()[index]
    fields = {"model": model, "prompt": "hostile", "quality": "512", "num_inference_steps": 1, "celery": True}
    if transport == "multipart":
        return client.post("/api/v1/images/generate", data={k: str(v) for k, v in fields.items()},
                           files={"image": ("in.bin", case.data, case.claimed_type)})
    if transport == "data_url":
        url = f"data:{case.claimed_type};base64,{base64.b64encode(case.data).decode()}"
    else:
        url = f"{url_base}/corpus/{index}"
    return client.post("/api/v1/images/generate", json={**fields, "image_urls": [url]})


_BUILT: list[Hostile] = []


def shared_corpus() -> list[Hostile]:
    """The corpus, built once per process (the loopback host's routes and the senders index the same list)."""
    if not _BUILT:
        _BUILT.extend(corpus())
    return _BUILT


# ---- loopback hosts -----------------------------------------------------------------------------------------
class Canary:
    """A TCP listener that counts every connection made to it (it never needs to answer)."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        """Stop listening."""
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class _HostileHandler(BaseHTTPRequestHandler):
    redirects: ClassVar[dict[str, str]] = {}
    corpus: ClassVar[list[Hostile]] = []
    cap: int = 0

    def do_GET(self) -> None:
        path = self.path
        if path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.startswith("/corpus/"):
            case = self.corpus[int(path.rsplit("/", 1)[1])]
            self._send(case.data, case.claimed_type)
        elif path == "/big":
            self._send(b"\0" * (self.cap * 3), "image/png")
        elif path == "/endless":  # no length, never ends: the cap must stop it while streaming
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return
        elif path == "/liar":  # says 100 bytes, sends megabytes
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                self.wfile.write(b"\0" * (self.cap * 3))
            except OSError:
                return
        elif path == "/slow":  # a byte a second: the total timeout must end it
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:
                return
        else:
            self._send(b"not found", "text/plain", 404)

    def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def hostile_host(redirects: dict[str, str], cap: int) -> Iterator[str]:
    """An HTTP host on 127.0.0.1 serving the corpus, redirects and abusive bodies; yields its base URL."""
    handler = type("Handler", (_HostileHandler,), {"redirects": redirects, "corpus": shared_corpus(), "cap": cap})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (containers sometimes lack IPv6)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def ssrf_targets(v4: int, v6: int | None) -> list[tuple[str, str]]:
    """(name, URL) for every direct trick aimed at the canaries: on 127.0.0.2:`v4`, and on [::1]:`v6`."""
    cases = [
        ("dotted", f"http://127.0.0.2:{v4}/x.png"),
        ("decimal", f"http://2130706434:{v4}/x.png"),
        ("hex", f"http://0x7f000002:{v4}/x.png"),
        ("octal", f"http://0177.0.0.2:{v4}/x.png"),
        ("short form", f"http://127.2:{v4}/x.png"),
        ("mixed hex dotted", f"http://0x7f.0.0.2:{v4}/x.png"),
        ("trailing dot", f"http://127.0.0.2.:{v4}/x.png"),
        ("upper-case scheme", f"HTTP://127.0.0.2:{v4}/x.png"),
        ("ipv4-mapped ipv6", f"http://[::ffff:127.0.0.2]:{v4}/x.png"),
        ("ipv4-mapped ipv6 hex", f"http://[::ffff:7f00:2]:{v4}/x.png"),
        ("ipv4-compatible ipv6", f"http://[::127.0.0.2]:{v4}/x.png"),
        ("credentials", f"http://user:pw@127.0.0.2:{v4}/x.png"),
        ("credentials naming another host", f"http://127.0.0.1:80@127.0.0.2:{v4}/x.png"),
        ("backslash confusion", f"http://127.0.0.1\\@127.0.0.2:{v4}/x.png"),
        ("fragment confusion", f"http://127.0.0.2:{v4}#@127.0.0.1/x.png"),
        ("https", f"https://127.0.0.2:{v4}/x.png"),
        ("ftp", f"ftp://127.0.0.2:{v4}/x.png"),
        ("gopher", f"gopher://127.0.0.2:{v4}/_GET%20/"),
        ("file", "file:///etc/passwd"),
        ("file host", "file://127.0.0.2/etc/passwd"),
        ("data not base64", "data:image/png,%89PNG"),
        ("javascript", "javascript:alert(1)"),
        ("no scheme", f"//127.0.0.2:{v4}/x.png"),
    ]
    if v6 is not None:
        cases += [
            ("ipv6 loopback", f"http://[::1]:{v6}/x.png"),
            ("ipv6 loopback long form", f"http://[0:0:0:0:0:0:0:1]:{v6}/x.png"),
            ("localhost (resolves to ::1 too)", f"http://localhost:{v6}/x.png"),
            ("ipv6 zone id", f"http://[::1%25lo]:{v6}/x.png"),
        ]
    return cases


def ssrf_redirects(v4: int, v6: int | None) -> dict[str, str]:
    """Redirects served by the allowlisted host, each aiming somewhere it must not go."""
    out = {
        "/to-canary": f"http://127.0.0.2:{v4}/x.png",
        "/to-decimal": f"http://2130706434:{v4}/x.png",
        "/to-file": "file:///etc/passwd",
        "/to-scheme-relative": f"//127.0.0.2:{v4}/x.png",
        "/to-credentials": f"http://user@127.0.0.2:{v4}/x.png",
        "/loop": "/loop",
    }
    if v6 is not None:
        out["/to-ipv6"] = f"http://[::1]:{v6}/x.png"
    return out


BODY_ABUSE = ("/big", "/endless", "/liar", "/slow")
