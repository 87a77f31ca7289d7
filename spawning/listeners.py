"""Listening sockets' shared state: which descriptors were handed to us, and how to stop
listening on the others.

Both the server (a worker draining on SIGTERM) and the process layer (the controller shutting
down) stop listening, and the process layer is the one that binds and adopts sockets
(``spawning.process.sockets``). What both need sits here, below both, so that the server does not
import the process layer above it.
"""

from __future__ import annotations

import socket

# Descriptors handed to us (fd://, systemd): whoever passed them may serve on them after we stop.
_ADOPTED: set[int] = set()


def adopt(fd: int) -> None:
    """Marks ``fd`` as handed to us by someone else (``stop_listening`` leaves it as it is)."""
    _ADOPTED.add(fd)


def stop_listening(socks: list[socket.socket]) -> None:
    """Makes the listening sockets we bound refuse new connections at once, in every process
    that shares them (shutdown acts on the socket, not on one descriptor): a server shutting
    down answers new clients with a refusal, which they may retry elsewhere, rather than queue
    them for the whole drain and then reset them. Adopted sockets are left as they are."""
    for sock in socks:
        try:
            if sock.fileno() >= 0 and sock.fileno() not in _ADOPTED:
                sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass    # not supported for listening sockets here (BSD, macOS): closing will do
