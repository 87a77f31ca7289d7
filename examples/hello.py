"""The smallest WSGI app: `spawning examples.hello.application` serves it on http://127.0.0.1:8080/."""


def application(environ, start_response):
    body = b"Hello from spawning!\n"
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
