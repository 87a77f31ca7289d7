"""Factories: how the command's words become a server config and an application (``--factory``).

The top layer below the command line (docs/architecture.md): ``wsgi`` (the default: a dotted path
plus middleware; the factory contract is in its docstring), ``paste`` (a PasteDeploy ini file, and
the ``paste.server_runner`` entry point) and ``django`` (a settings module). They are named by
dotted path (``spawning.factories.paste.config_factory``), so nothing is re-exported here.
"""
