"""Endpoints for the timeout, shutdown and recycling tests (tests/test_timeouts.py,
tests/test_shutdown.py).

/echo reads the whole request body and answers its length; /big?n=BYTES answers that many bytes;
/slow?s=SECONDS sleeps first (cooperatively in green mode: the standard library is patched);
anything else answers the worker's pid (per-worker request counts).
"""

import os
import time
from urllib.parse import parse_qs

from started import mark


def _arg(environ, name, default):
    return parse_qs(environ.get("QUERY_STRING", "")).get(name, [default])[0]


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/echo":
        stream = environ["wsgi.input"]
        total = 0
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            total += len(chunk)
        body = str(total).encode()
    elif path == "/big":
        body = b"x" * int(_arg(environ, "n", "1048576"))
    elif path == "/slow":
        mark()
        time.sleep(float(_arg(environ, "s", "1")))
        body = f"slept in {os.getpid()}".encode()
    else:
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# SPAWNING_TEST_NOFILE=N: the worker (which imports this module) may hold at most N descriptors,
# so that a few dozen connections run it out of them.
if os.environ.get("SPAWNING_TEST_NOFILE"):
    import resource

    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(os.environ["SPAWNING_TEST_NOFILE"]), _hard))
