"""Sleeps for ?s=SECONDS (default 3) before answering: an in-flight request to test draining."""

import os
import time
from urllib.parse import parse_qs

from started import mark


def application(environ, start_response):
    mark()
    seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["3"])[0])
    time.sleep(seconds)
    body = f"slept {seconds} in {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
