"""An app that keeps its start_response/write callables past their requests, strongly or weakly,
and uses them in a later request (tests/wsgi/test_response.py, test_kept_callables_never_reach_another_
request): the server reuses response objects that nothing holds any more, and a kept callable
must never write into a later request."""

import weakref

KEPT: list = []


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path in ("/keep-weak", "/keep-strong", "/keep-sr-weak"):
        write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        if path == "/keep-weak":
            KEPT.append(weakref.ref(write))
        elif path == "/keep-sr-weak":
            # A weak reference to start_response's owner, as weakref.WeakMethod keeps of a bound
            # Python method (spawning's start_response is a C method: WeakMethod refuses those).
            KEPT.append((weakref.ref(start_response.__self__), start_response.__name__))
        else:
            KEPT.append(write)
        return [b"kept"]
    if path == "/use":
        results = []
        for ref in KEPT:
            if isinstance(ref, tuple):
                owner = ref[0]()
                fn = getattr(owner, ref[1]) if owner is not None else None
            else:
                fn = ref() if isinstance(ref, weakref.ref) else ref
            if fn is None:
                results.append("gone")
                continue
            try:
                if isinstance(ref, tuple):
                    fn("200 OK", [("X-Leak", "1")])
                fn(b"LEAK")
                results.append("wrote")
            except Exception as e:   # the request it belonged to is over
                results.append(type(e).__name__)
        KEPT.clear()
        body = " ".join(results).encode() or b"none"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/write":   # HEAD: what write() gets is dropped, quietly (not an error)
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written")
        return [b""]
    body = path.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
