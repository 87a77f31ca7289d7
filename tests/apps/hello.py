"""The smallest application: 200 and a short body that names the process."""

import os


def application(environ, start_response):
    body = f"hello from {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
