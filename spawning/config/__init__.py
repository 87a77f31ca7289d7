"""Configuration: the options table (``options``), the immutable ``Settings`` every layer reads
(``settings``), where values come from (``sources``: the command line, ``SPAWNING_*`` environment
variables, a ``--config`` TOML file, paste ini keys, ``--print-config``), and the listening
addresses' syntax (``addresses``).

Layer: above ``spawning.errors`` and ``spawning.logs``, below everything else. Two validators
borrow a parser from a module above (``forwarded.parse_allow`` for ``--forwarded-allow-ips``,
``accesslog.check_format`` for ``--access-log-format``), imported lazily.
"""

from .settings import Settings

__all__ = ["Settings"]
