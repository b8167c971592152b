"""Who a client is, for abuse accounting: its address, its /64, its /24.

One IPv4 address is one client; an IPv6 client is its /64 (a single host or site is
routinely given a whole /64, so counting single IPv6 addresses would be no limit at
all). Neighbours share a network, the IPv4 /24 or the IPv6 /64, which is what
per-network connection limits and greylisting triplets key on. An IPv4-mapped IPv6
address (::ffff:192.0.2.1, as a dual-stack socket reports IPv4 peers) is IPv4.
"""

from __future__ import annotations

import ipaddress

IPV4_PREFIX = 24
IPV6_PREFIX = 64


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`ip` parsed (None if it is not an address), IPv4-mapped IPv6 as IPv4."""
    try:
        address = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_network(ip: str) -> str:
    """The IPv4 /24 or IPv6 /64 of `ip` ("192.0.2.0/24"); unparseable input as is."""
    address = client_address(ip)
    if address is None:
        return ip
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def client_key(ip: str) -> str:
    """Who a rate or probe count belongs to: the IPv4 address, or the IPv6 /64."""
    address = client_address(ip)
    if address is None:
        return ip
    return str(address) if address.version == 4 else client_network(ip)
