"""Takes SLOW_BOOT_SECONDS (default 2) to import, as a large app does, then answers its pid."""

import os
import time

time.sleep(float(os.environ.get("SLOW_BOOT_SECONDS", "2")))


def application(environ, start_response):
    body = f"{os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
