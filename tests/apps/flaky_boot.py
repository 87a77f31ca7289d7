"""Imports fine unless the file named by $FLAKY_BOOT_MARKER exists (a crash loop on demand)."""

import os

if os.path.exists(os.environ.get("FLAKY_BOOT_MARKER", "/nonexistent")):
    raise RuntimeError("flaky_boot: marker present, refusing to boot")


def application(environ, start_response):
    body = f"{os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
