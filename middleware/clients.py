"""Who is at the other end: the client address, believing `X-Forwarded-For` only from trusted proxies.

Shared by `logging` and `ratelimit`. Their `trusted_proxies` option defaults to the server's `trusted_proxies`
setting (comma-separated addresses or CIDRs, `*` for any) when that setting exists.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

import falcon

ANY = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def networks_from_setting(value: str) -> tuple:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    if "*" in items:
        return ANY
    return tuple(ipaddress.ip_network(v, strict=False) for v in items)


def default_trusted(config) -> tuple:
    return networks_from_setting(getattr(config, "trusted_proxies", "") or "")


def _address(text: str):
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def in_networks(text: str, networks: Iterable) -> bool:
    address = _address(text)
    return address is not None and any(address in network for network in networks)


def client_address(req: falcon.Request, trusted: tuple) -> str:
    """The direct peer, unless it is a trusted proxy: then the last `X-Forwarded-For` hop that is not one."""
    peer = req.remote_addr or ""
    if not trusted or not in_networks(peer, trusted):
        return peer
    header = req.get_header("X-Forwarded-For")
    if not header:
        return peer
    hops = [hop.strip() for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if _address(hop) is None:
            return peer  # a malformed hop: believe nothing further left
        if not in_networks(hop, trusted):
            return str(_address(hop))
    return str(_address(hops[0])) if hops else peer
