"""Middleware for tests: each adds a response header naming itself, so the order is visible."""


def _tagging(tag):
    def middleware(app):
        def wrapped(environ, start_response):
            def sr(status, headers, exc_info=None):
                return start_response(status, headers + [("X-Middleware", tag)], exc_info)
            return app(environ, sr)
        return wrapped
    return middleware


first = _tagging("first")
second = _tagging("second")


def create_app(greeting="hello"):
    """An application factory for the module:create_app() syntax."""
    def app(environ, start_response):
        body = greeting.encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return app
