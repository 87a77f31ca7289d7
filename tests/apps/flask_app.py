"""A Flask app for tests/test_frameworks.py: the answers werkzeug makes that a hand-written WSGI app
rarely does (a redirect with no body, streamed generators, send_file over a real file and over a
BytesIO, the empty iterable it gives HEAD, 204 and 304).

``SPAWNING_TEST_FILE`` names the file ``/file`` sends. ``/seen`` says which iterable each path's
last answer in this worker was, so a test can tell that the real file went out by sendfile
(``wsgi.file_wrapper``'s object reached the server as it is).
"""

from __future__ import annotations

import io
import os
import time

from flask import Flask, Response, redirect, request, send_file

app = Flask(__name__)
STREAM_CHUNKS = [f"chunk {i}: ".encode() + b"x" * (100 * i) + b"\n" for i in range(6)]
BYTESIO_BODY = bytes(range(256)) * 300


@app.route("/")
def index() -> str:
    return "flask index\n"


@app.route("/redirect")
def go() -> Response:
    return redirect("/")


@app.route("/bare-redirect")
def bare_redirect() -> Response:
    # No body: Content-Length: 0, as Django's admin answers (the answer lost before 6a781ed).
    return Response(status=302, headers={"Location": "/"})


@app.route("/stream")
def stream() -> Response:
    def chunks():
        for chunk in STREAM_CHUNKS:
            yield chunk
            time.sleep(0.002)   # each piece on its own: the server cannot know the length
    return Response(chunks(), mimetype="text/plain")


@app.route("/stream-until")
def stream_until() -> Response:
    # The second piece waits (5 s at most) for the client to create the file the query names
    # after it has read the first: a server that held the first piece back fails the test.
    flag = request.args["flag"]

    def chunks():
        yield b"first piece\n"
        deadline = time.monotonic() + 5
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.005)
        yield b"second piece\n"
    return Response(chunks(), mimetype="text/plain")


@app.route("/file")
def real_file() -> Response:
    return send_file(os.environ["SPAWNING_TEST_FILE"], mimetype="application/octet-stream")


@app.route("/bytesio")
def bytesio() -> Response:
    return send_file(io.BytesIO(BYTESIO_BODY), mimetype="application/octet-stream",
                     download_name="data.bin")


@app.route("/nothing")
def nothing() -> tuple[str, int]:
    return "", 204


SEEN: dict[str, str] = {}


@app.route("/seen")
def seen() -> dict[str, str]:
    return SEEN


def application(environ, start_response):
    result = app(environ, start_response)
    SEEN[environ["PATH_INFO"]] = type(result).__name__
    return result
