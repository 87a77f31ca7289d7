"""Deprecated: ``spawning.paste_factory`` is now ``spawning.factories.paste``, the PasteDeploy factory.

Every name of the new module stays reachable here (``--factory=spawning.paste_factory.config_factory``,
``from spawning.paste_factory import ...``), and importing this module warns (DeprecationWarning). It
will be removed in a later release: use ``spawning.factories.paste``.
"""

from __future__ import annotations

import warnings
from typing import Any

from .factories import paste as _new

warnings.warn("spawning.paste_factory is deprecated: use spawning.factories.paste", DeprecationWarning,
              stacklevel=2)

__all__ = list(getattr(_new, "__all__", [n for n in vars(_new) if not n.startswith("_")]))


def __getattr__(name: str) -> Any:
    # Looked up on each access, so that state the new module keeps (paste's loaded application)
    # is never a stale copy.
    return getattr(_new, name)
