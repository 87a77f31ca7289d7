"""An app that imports gevent (faked here): --threads 0 must refuse it at boot."""

import sys
import types

sys.modules.setdefault("gevent", types.ModuleType("gevent"))


def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
