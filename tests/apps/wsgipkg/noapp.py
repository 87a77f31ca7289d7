"""Names its WSGI callable ``app``, not ``application``: ``wsgipkg.noapp`` alone cannot serve it."""


def app(environ, start_response):
    start_response("204 No Content", [])
    return []
