"""The status service and what it shows: the controller's view of every worker, as an HTML page,
a JSON document and Prometheus metrics on ``--status-port``, the ``spawning status`` command that
reads it. (The ``--health-path`` middleware the workers answer probes with is WSGI middleware, so
it lives below, in spawning.wsgi.health.)

Layer: the top of the server, beside the controller it reports on (spawning.process); it imports
nothing above it. Modules: ``model`` (the document's data), ``page`` (HTML, CSS, script, figures
for people), ``prometheus`` (``/metrics``), ``service`` (its HTTP server in the controller's loop;
``attach`` is the controller's hook), ``command`` (``spawning status``).
"""
