"""Listening sockets: bind them once in the controller, describe them for logs (the addresses'
syntax is ``spawning.config.addresses``; ``stop_listening``, which the server needs too, is
``spawning.listeners``).

The controller binds every listening socket before it forks the first worker and keeps them open for
its whole life; workers inherit them across ``fork()`` and accept on them. That is why a reload never
refuses a connection: the kernel's accept queue outlives every worker.

``[V6ADDR]:PORT`` listeners get ``IPV6_V6ONLY``, so ``[::]`` and ``0.0.0.0`` can both be bound; a
stale ``unix:/path`` socket file left by a dead server is removed (a live one is an error).

With ``LISTEN_FDS``/``LISTEN_PID`` set for this process (systemd socket activation) the inherited
descriptors 3.. are used and nothing is bound.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import time
from typing import TYPE_CHECKING, Any

from ..config.addresses import Address, addresses_from_config
from ..errors import EXIT_FAILURE, Halt
from ..listeners import adopt

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("spawning")

#: How often and how far apart a bind that fails with EADDRINUSE is retried (a previous server may
#: still be releasing the port). Total about two seconds, like gunicorn's five tries a second apart
#: but shorter, because a user waiting at a terminal wants the answer soon.
BIND_RETRIES = 4
BIND_RETRY_DELAY = 0.5

SD_LISTEN_FDS_START = 3


def systemd_sockets(environ: dict[str, str] | None = None, unset: bool = True) -> list[socket.socket]:
    """Sockets passed by systemd socket activation (sd_listen_fds(3)), or ``[]``.

    Only honoured when ``LISTEN_PID`` names this process, so a child that inherited the variables by
    mistake does not steal descriptors. The variables are removed afterwards (as sd_listen_fds with
    unset_environment=1) so the application's subprocesses do not see them.
    """
    env = os.environ if environ is None else environ
    try:
        count = int(env.get("LISTEN_FDS", "0"))
        pid = int(env.get("LISTEN_PID", "0"))
    except ValueError:
        return []
    if count <= 0 or pid != os.getpid():
        return []
    if unset:
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(key, None)
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        socks.append(socket.socket(fileno=fd))
        adopt(fd)
    return socks


def _remove_stale_unix_socket(path: str) -> None:
    """Removes a socket file left by a dead server; refuses to touch a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise Halt(EXIT_FAILURE, f"spawning: cannot bind unix:{path}: the file exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody accepts there: stale
        return
    except OSError:
        return  # let bind() report whatever is wrong
    finally:
        probe.close()
    raise Halt(EXIT_FAILURE, f"spawning: cannot bind unix:{path}: another server is listening there")


def _bind_one(address: Address, backlog: int, defer_accept: int) -> socket.socket:
    if address.kind == "fd":
        sock = socket.socket(fileno=address.fd)
        os.set_inheritable(address.fd, False)
        adopt(address.fd)
        return sock
    if address.kind == "unix":
        _remove_stale_unix_socket(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address.path)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock
    infos = socket.getaddrinfo(address.host, address.port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                               0, socket.AI_PASSIVE)
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if defer_accept > 0 and hasattr(socket, "TCP_DEFER_ACCEPT"):
            # An HTTP client speaks first: until its request arrives the connection waits in
            # the kernel (a silent one for at most defer_accept seconds, then it is handed
            # over and --header-timeout runs), and a worker wakes once per connection, for its
            # accept and its request together, instead of twice (the gain under Connection:
            # close: bench/README.md, "Why the code is as it is").
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer_accept)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_all(settings: Settings, sleep: Any = time.sleep) -> list[socket.socket]:
    """Binds every configured address (or adopts systemd's sockets) and returns them listening.

    A port in use is retried ``BIND_RETRIES`` times; then, as for any other bind failure, raises
    ``Halt(1)`` with one line. Sockets already bound are closed before raising.
    """
    inherited = systemd_sockets()
    if inherited:
        return inherited
    backlog = settings.backlog
    defer_accept = settings.defer_accept
    socks: list[socket.socket] = []
    try:
        for address in addresses_from_config(settings):
            for attempt in range(BIND_RETRIES + 1):
                try:
                    socks.append(_bind_one(address, backlog, defer_accept))
                    break
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE and attempt < BIND_RETRIES:
                        log.debug("address %s in use, retrying in %.1f s", address, BIND_RETRY_DELAY)
                        sleep(BIND_RETRY_DELAY)
                        continue
                    reason = exc.strerror or str(exc)
                    raise Halt(EXIT_FAILURE, f"spawning: cannot bind {address}: {reason}") from None
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def recv_ready(sock: socket.socket, size: int) -> bytes | None:
    """What a non-blocking socket holds now: None when nothing yet, b'' when the peer closed it
    or it failed (the caller closes its end either way)."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def describe(sock: socket.socket) -> str:
    """A listening socket as a user reads it: ``http://127.0.0.1:8080``, ``http://[::1]:8080``,
    ``unix:/run/app.sock``."""
    try:
        name = sock.getsockname()
    except OSError:
        return f"fd://{sock.fileno()}"
    if sock.family == socket.AF_UNIX:
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"
    if sock.family == socket.AF_INET6:
        return f"http://[{name[0]}]:{name[1]}"
    return f"http://{name[0]}:{name[1]}"


def unix_paths(socks: list[socket.socket]) -> list[str]:
    """Paths of the unix sockets among ``socks`` (removed by the controller when it exits)."""
    paths = []
    for sock in socks:
        if sock.family == socket.AF_UNIX:
            name = sock.getsockname()
            if isinstance(name, bytes):
                name = name.decode()
            if name and not name.startswith("\0"):
                paths.append(name)
    return paths
