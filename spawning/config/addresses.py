"""Listening addresses as settings name them (``--bind``, ``--host``/``--port``,
``--proxy-protocol``): their syntax, checked when the settings are read, and which listeners speak
the PROXY protocol. Binding them is ``spawning.process.sockets``'s job.

Addresses (``--bind``, repeatable):

- ``HOST:PORT``, ``:PORT`` or ``PORT`` (IPv4 or a host name),
- ``[V6ADDR]:PORT`` (IPv6),
- ``unix:/path``,
- ``fd://N`` (an already listening descriptor handed over by a parent process);
- any of these as ``proxy://ADDRESS``: connections there start with a PROXY protocol preamble
  (``--proxy-protocol`` sets that for every listener).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["Address", "addresses_from_config", "parse_address", "proxy_listeners"]


@dataclass(frozen=True)
class Address:
    """A parsed listening address. ``kind`` is ``tcp``, ``unix`` or ``fd``."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1
    proxy: bool = False    # connections start with a PROXY protocol preamble

    def __str__(self) -> str:
        if self.proxy:
            return "proxy://" + str(dataclasses.replace(self, proxy=False))
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parses one ``--bind`` value; raises ``ConfigError`` with a one-line reason."""
    text = text.strip()
    if text.startswith("proxy://"):
        rest = text[len("proxy://"):]
        if not rest.strip():
            raise ConfigError(f"bad address {text!r}: proxy:// needs an address")
        inner = parse_address(rest)
        if inner.proxy:
            raise ConfigError(f"bad address {text!r}: proxy:// twice")
        return dataclasses.replace(inner, proxy=True)
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        path = path.removeprefix("//")
        if not path:
            raise ConfigError(f"bad address {text!r}: unix: needs a path")
        return Address("unix", path=path)
    if text.startswith("fd://"):
        try:
            fd = int(text[len("fd://"):])
        except ValueError:
            raise ConfigError(f"bad address {text!r}: fd:// needs a number") from None
        if fd < 0:
            raise ConfigError(f"bad address {text!r}: negative descriptor")
        return Address("fd", fd=fd)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad address {text!r}: expected [IPV6]:PORT")
        port_text = rest[1:] if rest else "8080"
    elif text.count(":") > 1:
        raise ConfigError(f"bad address {text!r}: put IPv6 addresses in brackets, e.g. [::1]:8080")
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    elif text.isdigit():
        host, port_text = "", text
    else:
        host, port_text = text, "8080"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"bad address {text!r}: port {port} is out of range 0-65535")
    return Address("tcp", host=host or "0.0.0.0", port=port)


def addresses_from_config(settings: Settings) -> list[Address]:
    """The addresses to listen on: ``--bind`` values if any, else ``--host``/``--port``."""
    if settings.bind:
        return [b if isinstance(b, Address) else parse_address(b) for b in settings.bind]
    host = settings.host
    if host.startswith("unix:"):
        return [parse_address(host)]
    return [Address("tcp", host=host.strip("[]"), port=settings.port)]


def proxy_listeners(settings: Settings, count: int) -> int:
    """The bit mask of listeners (by index, as ``bind_all`` returns them) whose connections start
    with a PROXY preamble: all with ``--proxy-protocol``, else those bound as ``proxy://``.
    Sockets from systemd follow only ``--proxy-protocol`` (no address names them)."""
    if settings.proxy_protocol:
        return (1 << min(count, 64)) - 1
    mask = 0
    binds = settings.bind
    if binds and len(binds) == count:
        for i, address in enumerate(addresses_from_config(settings)[:64]):
            if address.proxy:
                mask |= 1 << i
    return mask
