"""Which addresses the server may fetch images from.

Only globally routable unicast addresses pass by default. Loopback, private,
link-local (cloud metadata lives there), multicast, reserved, unspecified and
IPv4-mapped/6to4/Teredo forms of those are refused unless an operator put the
host or a CIDR containing it on the allowlist.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Metadata endpoints that are not caught by the link-local rule everywhere.
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
             ipaddress.ip_address("100.100.100.200")}


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    # IPv4-compatible (deprecated ::a.b.c.d) and NAT64 (64:ff9b::/96) embed an IPv4 address in the low bits.
    if int(ip) >> 32 == 0 or ip in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address (after unwrapping IPv4 embedded in IPv6)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            return is_public(inner)
    if ip in _METADATA:
        return False
    return bool(ip.is_global) and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
                                       or ip.is_link_local or ip.is_private)


class Allowlist:
    """Operator-trusted hosts (exact, case-insensitive) and networks (CIDR)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    def allows(self, host: str, ip: IPAddress) -> bool:
        """True when the host name or the resolved address is on the list."""
        if host.lower().rstrip(".") in self.hosts:
            return True
        check = ip
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            check = ip.ipv4_mapped
        return any(check in net for net in self.networks if net.version == check.version)


def address_allowed(host: str, ip: IPAddress, allowlist: Allowlist) -> bool:
    """The one rule every fetch goes through."""
    return is_public(ip) or allowlist.allows(host, ip)
