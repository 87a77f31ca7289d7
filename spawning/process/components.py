"""Components: what other parts of the server plug into the controller with (the status service
of ``--status-port``, ``--coverage``'s report), and how they are attached.

- ``add_reader(fd, callback)`` / ``remove_reader(fd)`` run ``callback()`` in the controller's loop
  whenever ``fd`` is readable; ``add_timer(interval, callback)`` runs ``callback()`` periodically;
  ``at_exit(callback)`` runs at shutdown. Everything runs in the controller's one thread, so no
  locking is needed; callbacks must not block. Descriptors given to ``add_reader`` are closed in
  workers after fork.
- ``COMPONENTS`` lists (setting, ``module:attach``) pairs: when the setting is truthy, the
  controller imports the module and calls ``attach(controller)`` after binding its sockets. A
  factory may name more in ``config["components"]``.
- What components read of the controller, ``Controller.snapshot()`` and ``Controller.readiness()``,
  stays with the state it describes, in ``spawning.process.controller``.

``ComponentHost`` is the controller's part that does this; ``Controller`` derives from it and
holds its state (``_selector``, ``_readers``, ``_timers``, ``_exit_hooks``), set in its
``__init__`` with the rest.
"""

from __future__ import annotations

import logging
import selectors
from collections.abc import Callable
from typing import Any

from ..config import Settings
from .worker import import_object

log = logging.getLogger("spawning")

COMPONENTS: tuple[tuple[str, str], ...] = (
    ("status_port", "spawning.status.service:attach"),
    ("coverage", "spawning.coverage_support:attach"),
)


class ComponentHost:
    """Readers, timers and exit hooks in the controller's loop, and the components attached to it
    (see the module docstring)."""

    clock: Callable[[], float]
    settings: Settings
    _selector: selectors.BaseSelector
    _readers: dict[int, Callable[[], None]]
    _timers: list[list[Any]]   # [interval, next_due, callback]
    _exit_hooks: list[Callable[[], None]]

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Runs ``callback()`` in the loop whenever ``fd`` is readable (see the module docstring)."""
        self._readers[fd] = callback
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        """Stops watching ``fd`` (which ``add_reader`` was given); nothing if it is not watched."""
        if self._readers.pop(fd, None) is not None:
            self._selector.unregister(fd)

    def add_timer(self, interval: float, callback: Callable[[], None]) -> None:
        """Runs ``callback()`` in the loop about every ``interval`` seconds."""
        self._timers.append([interval, self.clock() + interval, callback])

    def at_exit(self, callback: Callable[[], None]) -> None:
        """Runs ``callback()`` when the controller shuts down (before the sockets close)."""
        self._exit_hooks.append(callback)

    def _run_timers(self, now: float) -> None:
        """Runs the timers due at ``now`` (the controller's clock); one that raises is logged."""
        for timer in self._timers:
            if now >= timer[1]:
                timer[1] = now + timer[0]
                try:
                    timer[2]()
                except Exception:
                    log.exception("error in a controller timer")

    def _attach_components(self) -> None:
        wanted = [(key, target) for key, target in COMPONENTS if getattr(self.settings, key)]
        # A factory may add its own: config["components"] = ["module:attach", ...].
        wanted += [("components", target) for target in self.settings.extra.get("components") or []]
        for key, target in wanted:
            try:
                attach = import_object(target)
            except (ImportError, AttributeError) as exc:
                log.warning("--%s: %s is not available (%s)", key.replace("_", "-"), target, exc)
                continue
            attach(self)
