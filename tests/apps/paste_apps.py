"""PasteDeploy factories for tests: an app, a filter and a small urlmap-style composite.

The app answers JSON naming its worker process, so a test can count the workers behind a port, and
echoing what PasteDeploy handed it (global_conf, its own settings), so a test can check the ini file
was read the way ``pserve`` reads it.
"""

import json
import os


def app_factory(global_conf, **settings):
    """``paste.app_factory``: ``greeting`` from the section, everything else echoed."""
    greeting = settings.get("greeting", "hello")

    def app(environ, start_response):
        body = json.dumps({
            "pid": os.getpid(),
            "greeting": greeting,
            "script_name": environ.get("SCRIPT_NAME", ""),
            "path_info": environ.get("PATH_INFO", ""),
            "global_conf": {k: v for k, v in global_conf.items() if k != "__script__"},
            "filtered": environ.get("paste_apps.filtered", []),
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


def filter_factory(global_conf, tag="filter", **settings):
    """``paste.filter_factory``: records ``tag`` in the environ and adds an ``X-Filter`` header."""
    def make_filter(app):
        def filtered(environ, start_response):
            environ.setdefault("paste_apps.filtered", []).append(tag)

            def sr(status, headers, exc_info=None):
                return start_response(status, headers + [("X-Filter", tag)], exc_info)

            return app(environ, sr)

        return filtered

    return make_filter


def urlmap_factory(loader, global_conf, **mapping):
    """``paste.composite_factory``: ``/prefix = app_name`` lines, longest prefix first (as
    ``paste.urlmap`` does); the prefix moves from PATH_INFO to SCRIPT_NAME."""
    routes = sorted(((prefix.rstrip("/"), loader.get_app(name, global_conf=global_conf))
                     for prefix, name in mapping.items()), key=lambda r: -len(r[0]))

    def urlmap(environ, start_response):
        path = environ.get("PATH_INFO", "")
        for prefix, app in routes:
            if path == prefix or path.startswith(prefix + "/") or prefix == "":
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
                environ["PATH_INFO"] = path[len(prefix):]
                return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
        return [b"not found"]

    return urlmap


def broken_app_factory(*args, **settings):
    """An app factory that fails, as a misconfigured application would."""
    raise RuntimeError("the database is not configured")
