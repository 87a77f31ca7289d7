"""The request's ``environ``: the constant part per listening socket (``base_environ``), and the
per-request part made from the block the C core packed from the head (``request_environ``).

The block (``sp_request.env``, csrc/sp.h) holds REMOTE_ADDR, the fixed values (``ENV_FIXED``), then
``KEY\\0value`` pairs for CONTENT_TYPE/LENGTH and HTTP_*, then REMOTE_PORT: one latin-1 decode, one
split and one ``dict.update(zip(it, it))``, no Python loop per header. A trusted proxy's headers
then rewrite it (spawning.wsgi.forwarded). This is the general path, with no cache: C keeps the one
cache there is, of a connection's repeats (csrc/py/environ.c).
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._core import ffi, lib
from .forwarded import ProxyTrust
from .input import EMPTY_INPUT, ClientDisconnected
from .response import FileWrapper

if TYPE_CHECKING:
    from ..config import Settings

# The values that open every environ block, in order (csrc/sp.h: the connection's address, then
# SP_ENV_FIXED). Constant strings: their hashes are computed once, not per request.
ENV_FIXED = ("REMOTE_ADDR", "REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL",
             "RAW_URI")


def request_environ(srv: Any, code: int, base_envs: list[dict],
                    forwarded: ProxyTrust | None) -> tuple[dict, bool]:
    """The environ of the request ``code`` names on the server ``srv`` (a plain pointer), made
    from its packed block over its listener's ``base_envs`` entry, and whether a body comes (if
    not, ``wsgi.input`` is the shared empty input already). Raises ClientDisconnected when the
    request is over."""
    req = lib.sp_code_env(srv, code)   # the block packed from the head (csrc/sp.h)
    if req == ffi.NULL:
        raise ClientDisconnected(errno.ESTALE, "the request is over")
    key, _, port = ffi.unpack(req.env, req.env_len).rpartition(b"\0")
    env = (base_envs[req.listener] if base_envs else {}).copy()
    it = iter(key.decode("latin-1").split("\0"))
    env.update(zip(ENV_FIXED, it))    # stops at the end of ENV_FIXED without taking from it
    env.update(zip(it, it))
    env["REMOTE_PORT"] = port.decode("latin-1")
    has_body = req.body != 0
    if not has_body:
        env["wsgi.input"] = EMPTY_INPUT
    if forwarded is not None:
        port = forwarded.apply(env)   # a trusted proxy's headers (spawning.wsgi.forwarded)
        if port is not None:
            env["REMOTE_PORT"] = port
    return env, has_body


def base_environ(sockname: Any, family: int, settings: Settings) -> dict:
    """The constant part of environ for one listening socket."""
    if family in (socket.AF_INET, socket.AF_INET6):
        host, port = sockname[0], sockname[1]
    else:
        host, port = "localhost", "0"
    threads = settings.threads
    return {
        "SERVER_SOFTWARE": f"spawning/{__version__}",
        "SCRIPT_NAME": "",
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": threads != 1,   # 0: green threads run requests concurrently too
        "wsgi.multiprocess": settings.processes > 1,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }
