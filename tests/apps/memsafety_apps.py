"""Apps that try to make the C core touch memory it no longer owns (issue 22, section 2); each is
driven by tests/test_memory_safety.py.

``kept_write``: ``/keep`` reads its request body (so that the response went through the paths
that read the body), keeps the ``write()`` callable and answers; ``/use`` calls the kept callable
during a later request and says what happened; ``/pid`` names the worker.

``fork``: ``/fork`` forks a child that sleeps holding copies of every socket, as an app that
uses os.fork() or multiprocessing's fork start method does; ``/n`` answers a short body.

``green_fork``: ``/fork`` forks a child that sleeps with ``time.sleep``, which green mode patches,
then exits; every other path answers the pid of the process that answered.

``clearing_status``: the status is a str subclass whose comparison empties the list the app
returned, so that the body in it is freed while the server compares the head with the last one.
"""

import ctypes
import os
import time

KEPT: list = []


def kept_write(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/keep":
        data = environ["wsgi.input"].read()
        KEPT.append(start_response("200 OK", [("Content-Type", "text/plain"),
                                              ("Content-Length", "8")]))
        return [b"kept %03d" % (len(data) % 1000)]
    if path == "/use":
        try:
            KEPT[-1](b"INJECTED")
            outcome = b"no error"
        except Exception as e:   # noqa: BLE001 -- what a stale write() must do: raise in the app
            outcome = b"raised " + type(e).__name__.encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(outcome)))])
        return [outcome]
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def fork(environ, start_response):
    if environ["PATH_INFO"] == "/fork":
        if os.fork() == 0:
            # Holds the worker's sockets meanwhile. libc's sleep: in green mode time.sleep
            # would switch to the hub, which would then serve the worker's connections here.
            ctypes.CDLL(None).sleep(3)
            os._exit(0)
        body = b"forked"
    elif environ["PATH_INFO"] == "/pid":
        body = str(os.getpid()).encode()
    else:
        body = b"n" * 100
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def green_fork(environ, start_response):
    if environ["PATH_INFO"] == "/fork":
        if os.fork() == 0:
            try:
                time.sleep(2)   # green mode's patched sleep: must block this child only
            finally:
                os._exit(0)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def body_of(n: int, size: int) -> bytes:
    """The body of request n: its bytes differ per request, so a freed one shows."""
    block = (b"%08d" % n) * 8
    return (block * (size // len(block) + 1))[:size]


class ClearingStatus(str):
    """A status that empties the response's list when it is compared with an equal status (the
    server's last head): the body is then the server's to keep alive, and the answer is the
    same whichever path compares. An unequal comparison leaves the list alone."""

    victim: list | None = None

    def __eq__(self, other):
        equal = str.__eq__(self, other)
        if equal is True and self.victim is not None:
            self.victim.clear()
        return equal

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = str.__hash__


def clearing_status(environ, start_response):
    """/N/SIZE: SIZE bytes of body_of(N). Odd N answer with a ClearingStatus; even N (and /-1/0,
    which names the worker) with a plain str, which the Python path requires of a head it
    registers: the odd ones then find their head registered and compare with it."""
    n, size = (int(x) for x in environ["PATH_INFO"].split("/")[1:3])
    headers = [("Content-Type", "application/octet-stream")]
    result = [body_of(n, size) if n >= 0 else str(os.getpid()).encode()]
    if n > 0 and n % 2:
        status = ClearingStatus("200 OK")
        status.victim = result    # the list holds the only reference to the body
        start_response(status, headers)
    else:
        start_response("200 OK", headers)
    return result
