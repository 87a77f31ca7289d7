"""Configuration: the options table (``options``), the immutable ``Settings`` every layer reads
(``settings``), where values come from (``sources``: the command line, ``SPAWNING_*`` environment
variables, a ``--config`` TOML file, paste ini keys, ``--print-config``), and the syntax of the
values that need more than a type: the listening addresses (``addresses``), the trusted proxies
(``proxies``) and the access log's format (``accesslog_format``).

Layer: above ``spawning.errors`` and ``spawning.logs``, below everything else: the layers above
read their options' syntax from here, never the other way round.
"""

from .settings import Settings

__all__ = ["Settings"]
