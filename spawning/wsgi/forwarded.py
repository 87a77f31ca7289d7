"""Proxy headers: who the client is and how it connected, when a trusted proxy says so.

Theory of operation
-------------------
A reverse proxy (nginx, a cloud load balancer) connects to us itself, so the peer address is the
proxy's and the scheme is plain HTTP even when the client used TLS. Proxies say what they saw in
headers: ``X-Forwarded-For`` / ``-Proto`` / ``-Ssl`` / ``-Host`` / ``-Port`` (de facto) and
``Forwarded`` (RFC 7239). Anyone can send those headers, so they are believed only from peers in
``--forwarded-allow-ips`` (default ``127.0.0.1,::1``, as gunicorn; Unix-socket peers are local
processes and trusted, as gunicorn does too). From any other peer they reach the app untouched,
and nothing is taken from them.

Client address: the proxies append to the list left to right, so it is read from the right: each
entry that is itself a trusted proxy is stepped over, and the first that is not is the client
(an attacker can put anything to the left of it, never to the right). If every entry is trusted,
the leftmost is the client. An entry that cannot be parsed, or an RFC 7239 ``unknown`` /
obfuscated identifier (``_hidden``), ends the walk with the peer's address kept: we cannot tell
who is behind it. ``Forwarded`` is preferred over ``X-Forwarded-For`` when it names a client.

``REMOTE_PORT``: the client's port when the proxy gives one (``Forwarded: for="[2001:db8::1]:4711"``,
or ``X-Forwarded-For: 192.0.2.1:4711`` as some cloud balancers send), else it stays the peer's
port, as gunicorn leaves it.

Scheme: ``Forwarded``'s ``proto=`` from the element that named the client, else the rightmost
value of ``X-Forwarded-Proto`` (what the nearest proxy said), else ``X-Forwarded-Ssl: on``.
Only ``http`` and ``https`` are taken.

Host and port (``--forwarded-host``, off by default since a proxy that passes the client's
``X-Forwarded-Host`` through would let it choose the host the app builds links with):
``Forwarded``'s ``host=`` or the rightmost ``X-Forwarded-Host`` sets ``HTTP_HOST``, and the
rightmost ``X-Forwarded-Port`` sets ``SERVER_PORT``.

All of it runs once the environ is made, and only for a request that carries one of these
headers (spawning.wsgi.environ and the C path's environ, csrc/py/environ.c, which asks only then):
the others cost nothing more. Nothing here raises: what cannot be parsed is ignored.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any

from ..config.proxies import parse_allow

log = logging.getLogger("spawning")

#: Peers whose trust is remembered (the handler calls ``apply`` once per env block, and blocks of
#: one peer repeat); emptied when full.
_TRUST_CACHE_MAX = 1024
#: Entries of a forwarding chain looked at, at most: a longer chain is a client padding the header.
MAX_HOPS = 64

# RFC 7230 token characters, for Forwarded parameter names and unquoted values (RFC 7239 4).
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PAIR = re.compile(r'\s*(' + _TOKEN + r')\s*=\s*(' + _TOKEN + r'|"(?:[^"\\]|\\.)*")\s*')
# A Host header value: a name, an IPv4 address or a bracketed IPv6 address, and an optional port.
_HOST = re.compile(r"(?:[A-Za-z0-9\-._~%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_PORT = re.compile(r"[0-9]{1,5}")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:   # ::ffff:a.b.c.d is a.b.c.d
        return ip.ipv4_mapped
    return ip


def _split_node(text: str) -> tuple[str, str] | None:
    """``(address, port)`` of one X-Forwarded-For entry or Forwarded ``for=`` value (unquoted):
    ``192.0.2.1``, ``192.0.2.1:4711``, ``2001:db8::1``, ``[2001:db8::1]``, ``[2001:db8::1]:4711``.
    The address is canonical text; port is '' when absent. None when it is not an address."""
    text = text.strip()
    port = ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            return None
        if rest:
            if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]):
                return None
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _PORT.fullmatch(port):
            return None
    else:
        host = text
    if port and int(port) > 65535:
        return None
    ip = _ip(host)
    if ip is None:
        return None
    return str(ip), str(int(port)) if port else ""


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_forwarded(value: str) -> list[dict[str, str]] | None:
    """The elements of a ``Forwarded`` header (RFC 7239 4), each a dict of lower-cased parameter
    names to unquoted values; None when the header is malformed anywhere (then none of it is
    believed: a broken header says nothing reliable)."""
    elements: list[dict[str, str]] = []
    # Split on commas outside quoted strings.
    parts, buf, quoted, escaped = [], [], False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    if quoted:
        return None
    parts.append("".join(buf))
    if len(parts) > MAX_HOPS:
        parts = parts[-MAX_HOPS:]
    for part in parts:
        element: dict[str, str] = {}
        pos = 0
        part = part.strip()
        if not part:
            continue                # RFC 7230 7: empty list elements are allowed and ignored
        while pos < len(part):
            m = _PAIR.match(part, pos)
            if m is None:
                return None
            name = m.group(1).lower()
            if name in element:     # RFC 7239 4: each parameter at most once per element
                return None
            element[name] = _unquote(m.group(2))
            pos = m.end()
            if pos < len(part):
                if part[pos] != ";":
                    return None
                pos += 1
        elements.append(element)
    return elements


class ProxyTrust:
    """The ``--forwarded-allow-ips`` and ``--forwarded-host`` settings, applied to a request's
    environ (see the module docstring)."""

    def __init__(self, allow: Any = None, forwarded_host: bool = False) -> None:
        self.all, self.networks = parse_allow(allow)
        self.forwarded_host = bool(forwarded_host)
        self._cache: dict[str, bool] = {}

    def trusted(self, addr: str) -> bool:
        """Whether a peer (REMOTE_ADDR text) is a trusted proxy. '' (a Unix socket) is."""
        if self.all or not addr:
            return True
        known = self._cache.get(addr)
        if known is not None:
            return known
        ip = _ip(addr)
        ok = ip is not None and any(ip in net for net in self.networks)
        if len(self._cache) >= _TRUST_CACHE_MAX:
            self._cache.clear()
        self._cache[addr] = ok
        return ok

    def _walk(self, nodes: list[str]) -> tuple[int, tuple[str, str] | None]:
        """The client among a chain's node texts, read from the right: ``(index, (addr, port))``,
        or ``(index, None)`` when the walk stopped at an entry it could not use."""
        nodes = nodes[-MAX_HOPS:]
        for i in range(len(nodes) - 1, -1, -1):
            node = _split_node(nodes[i])
            if node is None:
                return i, None
            if not self.trusted(node[0]) or i == 0:
                return i, node
        return 0, None

    def apply(self, env: dict) -> str | None:
        """Rewrites a request's environ from the proxy headers of a trusted peer. Returns the
        client's port for REMOTE_PORT when the proxy gave one, else None (the peer's stays)."""
        try:
            if not self.trusted(env.get("REMOTE_ADDR", "")):
                return None
            return self._apply(env)
        except Exception:       # never a worker's crash for a header: keep what the peer gave
            log.debug("proxy headers ignored", exc_info=True)
            return None

    def _apply(self, env: dict) -> str | None:
        client: tuple[str, str] | None = None
        proto = host = None
        fwd = env.get("HTTP_FORWARDED")
        elements = parse_forwarded(fwd) if fwd else None
        if elements:
            fors = [(i, e["for"]) for i, e in enumerate(elements) if "for" in e]
            chosen = elements[-1]
            if fors and len(fors) == len(elements):
                at, node = self._walk([f for _, f in fors])
                chosen = elements[at]
                client = node
            proto = chosen.get("proto")
            host = chosen.get("host")
        if client is None and not (elements and all("for" in e for e in elements)):
            xff = env.get("HTTP_X_FORWARDED_FOR")
            if xff:
                _, client = self._walk([p for p in xff.split(",")])
        if proto is None:
            xfp = env.get("HTTP_X_FORWARDED_PROTO")
            if xfp:
                proto = xfp.rsplit(",", 1)[-1].strip()
            elif env.get("HTTP_X_FORWARDED_SSL", "").rsplit(",", 1)[-1].strip().lower() == "on":
                proto = "https"
        port = None
        if client is not None:
            env["REMOTE_ADDR"] = client[0]
            port = client[1] or None
        if proto is not None and proto.lower() in ("http", "https"):
            env["wsgi.url_scheme"] = proto.lower()
        if self.forwarded_host:
            if host is None:
                xfh = env.get("HTTP_X_FORWARDED_HOST")
                if xfh:
                    host = xfh.rsplit(",", 1)[-1].strip()
            if host and _HOST.fullmatch(host):
                env["HTTP_HOST"] = host
            xport = env.get("HTTP_X_FORWARDED_PORT")
            if xport:
                xport = xport.rsplit(",", 1)[-1].strip()
                if _PORT.fullmatch(xport) and 0 < int(xport) <= 65535:
                    env["SERVER_PORT"] = str(int(xport))
        return port
