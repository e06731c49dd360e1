"""Fetch image bytes from http(s) URLs and data: URLs, safely.

The host is resolved once, checked, and the connection goes to that checked
address (Host header and TLS SNI keep the name), so a second DNS answer cannot
swap in an internal address. Redirects are followed by hand, only to the same
host, each hop re-checked. The byte cap is enforced while streaming.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from server.errors import ApiError, ErrorCode
from server.media.netguard import Allowlist, address_allowed


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one download."""

    max_bytes: int
    connect_timeout_s: float
    total_timeout_s: float
    max_redirects: int


def decode_data_url(url: str, max_bytes: int, field: str) -> bytes:
    """Bytes of a `data:[<mime>][;base64],<payload>` URL (base64 only: images are binary)."""
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().endswith(";base64"):
        raise ApiError(400, ErrorCode.INVALID_IMAGE, "data URLs must be base64: data:image/png;base64,...", field)
    # 4 base64 chars carry 3 bytes: refuse before decoding anything oversized.
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise ApiError(413, ErrorCode.IMAGE_TOO_LARGE, f"image is larger than {max_bytes} bytes", field)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, ErrorCode.INVALID_IMAGE, "the data URL is not valid base64", field) from None
    if len(data) > max_bytes:
        raise ApiError(413, ErrorCode.IMAGE_TOO_LARGE, f"image is larger than {max_bytes} bytes", field)
    return data


async def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
        return [literal]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


class ImageFetcher:
    """Downloads image URLs under the SSRF policy and limits."""

    def __init__(self, allowlist: Allowlist, limits: FetchLimits) -> None:
        self.allowlist = allowlist
        self.limits = limits

    async def fetch(self, url: str, field: str) -> bytes:
        """Bytes behind `url` (http, https or data:); ApiError with a stable code otherwise."""
        if url[:5].lower() == "data:":
            return decode_data_url(url, self.limits.max_bytes, field)
        timeout = httpx.Timeout(self.limits.total_timeout_s, connect=self.limits.connect_timeout_s)
        try:
            return await asyncio.wait_for(self._follow(url, field, timeout), self.limits.total_timeout_s)
        except TimeoutError:
            raise ApiError(422, ErrorCode.FETCH_FAILED, "the image URL took too long to download", field) from None

    async def _follow(self, url: str, field: str, timeout: httpx.Timeout) -> bytes:
        first_host = None
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            for _hop in range(self.limits.max_redirects + 1):
                parts = urlsplit(url)
                scheme = parts.scheme.lower()
                if scheme not in ("http", "https") or not parts.hostname:
                    raise ApiError(422, ErrorCode.URL_NOT_ALLOWED, "image URLs must be http, https or data:", field)
                if parts.username or parts.password:
                    raise ApiError(422, ErrorCode.URL_NOT_ALLOWED, "image URLs must not carry credentials", field)
                host = parts.hostname
                if first_host is None:
                    first_host = host
                elif host != first_host:
                    raise ApiError(422, ErrorCode.URL_NOT_ALLOWED,
                                   "the image URL redirected to a different host", field)
                port = parts.port or (443 if scheme == "https" else 80)
                ip = await self._checked_address(host, port, field)
                netloc = f"[{ip}]" if ip.version == 6 else str(ip)
                pinned = urlunsplit((scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
                host_header = host if parts.port is None else f"{host}:{parts.port}"
                request = client.build_request(
                    "GET", pinned, headers={"Host": host_header, "Accept": "image/*", "Accept-Encoding": "identity"},
                    extensions={"sni_hostname": host} if scheme == "https" else {},
                )
                try:
                    response = await client.send(request, stream=True)
                except httpx.HTTPError:
                    raise ApiError(422, ErrorCode.FETCH_FAILED, "could not download the image URL", field) from None
                try:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        url = urljoin(url, location)
                        continue
                    if response.status_code != 200:
                        raise ApiError(422, ErrorCode.FETCH_FAILED,
                                       f"the image URL answered HTTP {response.status_code}", field)
                    return await self._read_capped(response, field)
                finally:
                    await response.aclose()
        raise ApiError(422, ErrorCode.FETCH_FAILED, "the image URL redirected too many times", field)

    async def _checked_address(self, host: str, port: int, field: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        addresses = await _resolve(host, port)
        if not addresses:
            raise ApiError(422, ErrorCode.FETCH_FAILED, "the image URL's host could not be resolved", field)
        # Every answer must pass: otherwise a mixed answer could still steer us inside.
        if not all(address_allowed(host, ip, self.allowlist) for ip in addresses):
            raise ApiError(422, ErrorCode.URL_NOT_ALLOWED,
                           "the image URL points to a private or local address; ask the operator to add the host "
                           "to DARKROOM_URL_ALLOWLIST if it is trusted", field)
        return addresses[0]

    async def _read_capped(self, response: httpx.Response, field: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_bytes:
            raise ApiError(413, ErrorCode.IMAGE_TOO_LARGE, f"image is larger than {self.limits.max_bytes} bytes", field)
        # Counted after content decoding, so a compressed body cannot expand past the cap.
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.limits.max_bytes:
                    raise ApiError(413, ErrorCode.IMAGE_TOO_LARGE,
                                   f"image is larger than {self.limits.max_bytes} bytes", field)
                chunks.append(chunk)
        except httpx.HTTPError:
            raise ApiError(422, ErrorCode.FETCH_FAILED, "the image download was interrupted", field) from None
        return b"".join(chunks)
