"""Configuration: the options table (``options``), the immutable ``Settings`` every layer reads
(``settings``), and where values come from (``sources``: the command line, ``SPAWNING_*``
environment variables, a ``--config`` TOML file, paste ini keys, ``--print-config``).

Layer: above ``spawning.errors`` and ``spawning.logs``, below everything else; it imports nothing of
ours besides those but the validators of a few values (``sockets.parse_address``,
``forwarded.parse_allow``, ``accesslog.check_format``), lazily.
"""

from .settings import Settings

__all__ = ["Settings"]
