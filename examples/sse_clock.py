"""A clock over server-sent events: every second, each client gets the time.

    spawning -t 0 examples.sse_clock.app
    curl -N http://127.0.0.1:8080/events

The response is a generator: spawning sends each chunk as it is yielded. When a client goes away
the next write fails, spawning closes the generator, and GeneratorExit reaches the ``finally``
below, which is where an app releases what the stream held.
"""

from __future__ import annotations

import time

from spawning import green

clients = 0

PAGE = b"""<!doctype html><meta charset="utf-8"><title>clock</title>
<h1 id="c">...</h1>
<script>new EventSource('/events').onmessage = e => { c.textContent = e.data; };</script>"""


def events():
    global clients
    clients += 1
    try:
        yield b"retry: 2000\n\n"
        while True:
            yield f"data: {time.strftime('%H:%M:%S')} ({clients} watching)\n\n".encode()
            green.sleep(1.001 - time.time() % 1.0)    # wake just after the next full second
    finally:
        clients -= 1


def app(environ, start_response):
    if environ["PATH_INFO"] == "/events":
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return events()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(PAGE)))])
    return [PAGE]
