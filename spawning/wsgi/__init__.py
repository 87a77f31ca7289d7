"""The WSGI (PEP 3333) adapter: turns a request the C core parsed into ``environ``, runs the app,
and hands the response back to C.

Layer: above the C core (``spawning._core``) and the leaves (spawning.errors, spawning.logs);
below the dispatchers (spawning.green, spawning.server), which call ``handler.make_handler``.
Modules, bottom to top: ``forwarded`` (trusted proxies' headers) and ``accesslog`` (one line per
request), ``input`` (``wsgi.input``), ``response`` (start_response, the head packed for C, the
result sent), ``environ`` (the environ from the core's packed block), ``handler`` (the request
handler the server calls, and the C path's Runner set up beside it), and ``health`` (the
/healthz and /readyz middleware the worker wraps the app in).
"""
