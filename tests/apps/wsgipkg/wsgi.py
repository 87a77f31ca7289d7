"""``application`` in a module of its own: ``spawning wsgipkg.wsgi`` serves it, as gunicorn does."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"wsgi.py!\n"]
