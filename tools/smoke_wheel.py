#!/usr/bin/env python3
"""Smoke test for an installed spawning (a wheel, or an sdist build): the native module imports and
names its backend, and `python -m spawning` serves one request.

Run it from outside the source tree so that the installed package is the one imported:

    cd /tmp && python /path/to/spawning/tools/smoke_wheel.py

cibuildwheel runs it as each wheel's test-command; tests/test_packaging.py and the sdist job in
.github/workflows/wheels.yml run it too. Exits non-zero, with the server's output, on failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

APP = '''
def application(environ, start_response):
    body = b"spawning smoke ok " + environ["PATH_INFO"].encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    import spawning._core  # the compiled module

    import spawning.server

    assert spawning._core.lib.sp_backend_name

    here = os.path.dirname(os.path.abspath(spawning.__file__))
    print(f"spawning {spawning.__version__} from {here}; backend {spawning.server.backend_name()}")
    with tempfile.TemporaryDirectory(prefix="spawning-smoke-") as tmp:
        with open(os.path.join(tmp, "smoke_app.py"), "w") as f:
            f.write(APP)
        port = free_port()
        env = dict(os.environ, PYTHONPATH=tmp)
        with open(os.path.join(tmp, "server.log"), "w+") as log:
            return serve_one(port, tmp, env, log)


def serve_one(port: int, tmp: str, env: dict[str, str], log: Any) -> int:
    """Starts the server, fetches /hello, stops it. Raises (after printing the server's output) on failure."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "spawning", "-s", "1", "-t", "2", "-i", "127.0.0.1", "-p", str(port),
         "smoke_app.application"],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=5) as r:
                    body = r.read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert body == b"spawning smoke ok /hello", body
        print(f"served: {body.decode()}")
    except BaseException:
        log.seek(0)
        sys.stderr.write("server output:\n" + log.read())
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
