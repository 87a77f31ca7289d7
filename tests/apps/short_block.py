"""Each request blocks for 0.8 ms (a fast database call, say) without using the CPU; ``/stats``
answers the most requests that ran at once since the last ``/stats``."""

import threading
import time

_lock = threading.Lock()
_running = 0
_most = 0


def application(environ, start_response):
    global _running, _most
    if environ["PATH_INFO"] == "/stats":
        with _lock:
            body = f"{_most}\n".encode()
            _most = 0
    else:
        with _lock:
            _running += 1
            _most = max(_most, _running)
        try:
            time.sleep(0.0008)
        finally:
            with _lock:
                _running -= 1
        body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
