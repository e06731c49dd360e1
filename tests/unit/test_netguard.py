"""The address check every image URL goes through (no connections are made here)."""

from __future__ import annotations

import ipaddress

import pytest

from server.media.netguard import Allowlist, address_allowed, is_public

REFUSED = ["127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "169.254.1.1",
           "100.100.100.200", "0.0.0.0", "224.0.0.1", "255.255.255.255", "100.64.0.1", "::1", "::", "fe80::1",
           "fc00::1", "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
           "2002:7f00:1::", "64:ff9b::a00:1", "::127.0.0.1"]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("addr", REFUSED)
def test_non_public_addresses_are_refused(addr: str) -> None:
    assert not is_public(ipaddress.ip_address(addr))
    assert not address_allowed("example.com", ipaddress.ip_address(addr), Allowlist([]))


@pytest.mark.parametrize("addr", ALLOWED)
def test_public_addresses_pass(addr: str) -> None:
    assert is_public(ipaddress.ip_address(addr))


def test_allowlist_hosts_and_cidrs() -> None:
    allow = Allowlist(["10.0.0.0/8", "Assets.Studio.LAN", " "])
    assert address_allowed("x", ipaddress.ip_address("10.2.3.4"), allow)
    assert address_allowed("x", ipaddress.ip_address("::ffff:10.2.3.4"), allow)
    assert address_allowed("assets.studio.lan.", ipaddress.ip_address("192.168.1.5"), allow)
    assert not address_allowed("other.lan", ipaddress.ip_address("192.168.1.5"), allow)
    assert not address_allowed("x", ipaddress.ip_address("169.254.169.254"), allow)
