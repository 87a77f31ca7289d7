"""An app that answers a keep-alive client's identical requests each a different way (tests/
wsgi/test_handler.py, test_repeated_requests_every_way): repeated requests run in C (csrc/py/runner.c)
until their answer is not the common one, and then go on in Python from just after the app call.
What it does is chosen by a count of its calls: one client, one request at a time. The body of
each answer is the count (6 digits), then the request's body."""

import sys

CALLS = [0]
KEPT: list = []
WAYS = 9


def application(environ, start_response):
    n = CALLS[0]
    CALLS[0] += 1
    way = n % WAYS
    body = b"%06d" % n + environ["wsgi.input"].read()
    HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    if way == 1:
        raise ValueError(f"boom {n}")
    if way == 2:        # an iterable that is not a list: streamed, chunked
        start_response("200 OK", HEADERS[:1])     # no Content-Length
        return iter([b"gen", body])
    if way == 3:        # a head unlike the last one
        start_response("200 OK", HEADERS + [("X-N", str(n))])
        return [body]
    if way == 4:
        start_response("200 OK", list(HEADERS), exc_info=None)
        return [body]
    if way == 5:
        start_response("200 OK", list(HEADERS), None)
        return [body]
    if way == 6:        # an error before anything went out: the head is replaced
        start_response("200 OK", list(HEADERS))
        try:
            raise KeyError(n)
        except KeyError:
            start_response("503 Service Unavailable", list(HEADERS), sys.exc_info())
        return [body]
    if way == 7:        # write() kept: the response object is never reused
        KEPT[:] = [start_response("200 OK", list(HEADERS))]
        return [body]
    if way == 8:        # the head went out with write(): the list's body follows it
        write = start_response("200 OK", list(HEADERS))
        write(body[:2])
        return [body[2:]]
    start_response("200 OK", list(HEADERS))
    return [body]
