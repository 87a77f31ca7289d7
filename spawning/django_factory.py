"""Deprecated: ``spawning.django_factory`` is now ``spawning.factories.django``, the Django factory.

Every name of the new module stays reachable here (``--factory=spawning.django_factory.config_factory``,
``from spawning.django_factory import ...``), and importing this module warns (DeprecationWarning). It
will be removed in a later release: use ``spawning.factories.django``.
"""

from __future__ import annotations

import warnings
from typing import Any

from .factories import django as _new

warnings.warn("spawning.django_factory is deprecated: use spawning.factories.django", DeprecationWarning,
              stacklevel=2)

__all__ = list(getattr(_new, "__all__", [n for n in vars(_new) if not n.startswith("_")]))


def __getattr__(name: str) -> Any:
    # Looked up on each access, so that state the new module keeps (paste's loaded application)
    # is never a stale copy.
    return getattr(_new, name)
