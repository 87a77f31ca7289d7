"""PasteDeploy factories for examples/development.ini: an app and a filter."""


def app_factory(global_conf, greeting="Hello from spawning!", **settings):
    """``paste.app_factory``: the hello app, its greeting taken from the ini file."""
    body = (greeting + "\n").encode()

    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return application


def header_filter_factory(global_conf, name="X-Served-By", value="spawning", **settings):
    """``paste.filter_factory``: adds one response header."""
    def wrap(app):
        def filtered(environ, start_response):
            def sr(status, headers, exc_info=None):
                return start_response(status, [*headers, (name, value)], exc_info)
            return app(environ, sr)
        return filtered

    return wrap
