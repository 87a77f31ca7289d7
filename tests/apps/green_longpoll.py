"""Long-poll for the green tests: GET /wait parks on one Event, POST /release wakes them all,
GET /count says how many wait. Runs only in --threads 0."""

from spawning import green

released = green.Event()
waiting = 0


def application(environ, start_response):
    global waiting
    path = environ["PATH_INFO"]
    if path == "/wait":
        waiting += 1
        try:
            ok = released.wait(120)
        finally:
            waiting -= 1
        body = b"released\n" if ok else b"timeout\n"
    elif path == "/release":
        released.set()
        body = b"ok\n"
    elif path == "/count":
        body = f"{waiting}\n".encode()
    else:
        body = b"?\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
