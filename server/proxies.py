"""Which reverse proxies are believed, and so who the client is: the one parser of `trusted_proxies`.

`trusted_proxies` (a setting, and an option of the `logging` and `ratelimit` middleware) is a comma-separated list
(or a list) of addresses and CIDR networks, or `*` for any peer. Forwarded headers (`X-Forwarded-For`, `-Proto`,
`-Host`) are believed only from a peer in that list; from anyone else they are ignored, so a client can neither
hide its address nor redirect another client's upload.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable


class TrustedProxies:
    def __init__(self, networks: tuple = (), *, trust_all: bool = False):
        self.networks = networks
        self.trust_all = trust_all
        self._verdicts: dict[str, bool] = {}

    @classmethod
    def parse(cls, value: str | Iterable[str]) -> "TrustedProxies":
        """From `"10.0.0.1, 192.168.0.0/16"`, a list of such items, or `*`; ValueError names a bad item."""
        items = value.split(",") if isinstance(value, str) else list(value)
        networks = []
        for item in (str(part).strip() for part in items):
            if not item:
                continue
            if item == "*":
                return cls(trust_all=True)
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return self.trust_all or bool(self.networks)

    def trusts(self, peer: str | None) -> bool:
        """Whether forwarded headers from this peer address are believed."""
        if self.trust_all:
            return True
        if not peer or not self.networks:
            return False
        verdict = self._verdicts.get(peer)
        if verdict is None:
            address = _address(peer)
            verdict = address is not None and any(address in network for network in self.networks)
            if len(self._verdicts) < 4096:  # a cache of peers, bounded: addresses are client-chosen
                self._verdicts[peer] = verdict
        return verdict

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The direct peer, unless it is a trusted proxy: then the last `X-Forwarded-For` hop that is not one."""
        peer = peer or ""
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                return peer  # a malformed hop: believe nothing further left
            if not self.trusts(str(address)):
                return str(address)
        first = _address(hops[0]) if hops else None
        return str(first) if first is not None else peer


def _address(text: str):
    try:
        return ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
