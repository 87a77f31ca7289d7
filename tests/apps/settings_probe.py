"""Says where it was imported and which process serves, and echoes an environment variable:
``GET /?NAME`` answers ``imported_in=PID pid=PID env=VALUE`` (for --preload and --env)."""

import os

IMPORTED_IN = os.getpid()


def application(environ, start_response):
    name = environ.get("QUERY_STRING") or "PROBE_GREETING"
    body = f"imported_in={IMPORTED_IN} pid={os.getpid()} env={os.environ.get(name, '')}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
