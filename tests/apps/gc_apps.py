"""What the worker's garbage collector looks like from inside the app (tests/process/test_worker.py)."""

import gc
import json


def application(environ, start_response):
    body = json.dumps({"frozen": gc.get_freeze_count(), "enabled": gc.isenabled()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
