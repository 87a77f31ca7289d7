"""``--forwarded-allow-ips``'s syntax: which peers are trusted proxies, as data.

What a trusted proxy's headers mean is ``spawning.wsgi.forwarded``'s business; which peers are
trusted is a setting, so its syntax lives here, where the option's validator can reach it without
importing a layer above.
"""

from __future__ import annotations

import ipaddress

DEFAULT_ALLOW = "127.0.0.1,::1"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow(text: str | list[str] | None) -> tuple[bool, tuple[Network, ...]]:
    """``(all, networks)`` from a comma list of addresses and CIDR blocks, or ``*``. Raises
    ``ValueError`` with the bad entry."""
    items: list[str] = []
    if text is None:
        text = DEFAULT_ALLOW
    for part in ([text] if isinstance(text, str) else list(text)):
        items += [p.strip() for p in str(part).split(",") if p.strip()]
    if "*" in items:
        return True, ()
    nets = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR block") from None
    return False, tuple(nets)
