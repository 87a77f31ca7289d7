"""File watching for ``--reload=dev``.

Theory of operation: workers report the source files of the modules in their ``sys.modules`` (again
whenever new modules are imported) over their channel; the controller adds them, and every
``--watch`` file, to one ``Reloader``. On Linux the reloader uses inotify (through the
``inotify_simple`` package) on the *directories* of those files, because editors often save by
writing a new file and renaming it over the old one, which a watch on the file itself would lose.
Elsewhere, or when inotify is unavailable, it polls the files' modification times once a second.

A change is not acted on at once: the reloader waits until no further change arrived for
``settle`` seconds (editors write in several steps), then reports the changed paths once. The
controller then starts a graceful reload; if the new code does not import, the old generation keeps
serving and the next change triggers another attempt.

The reloader is driven by the controller's loop: ``fileno()`` (inotify's descriptor, or None when
polling) goes into the loop's selector, ``on_readable()`` drains it, and ``poll()`` is called on every
loop turn and returns the changed paths once they have settled.
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import time
from collections.abc import Iterable

log = logging.getLogger("spawning")

try:  # a maintained ctypes wrapper around inotify(7); Linux only
    import inotify_simple  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - exercised on macOS / minimal installs
    inotify_simple = None  # type: ignore[assignment]

#: Seconds without further changes before a batch of changes is reported.
SETTLE = 0.2
#: Seconds between two scans in polling mode.
POLL_INTERVAL = 1.0


def _stdlib_dirs() -> tuple[str, ...]:
    dirs = {sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib")}
    return tuple(os.path.realpath(d) + os.sep for d in dirs if d)


_STDLIB = _stdlib_dirs()


def module_files(modules: Iterable[object] | None = None) -> set[str]:
    """Source files of the given modules (default: ``sys.modules``), standard library excluded.

    Safe to call from a thread other than the importing one: it iterates over a copy.
    """
    if modules is None:
        modules = list(sys.modules.copy().values())
    files = set()
    for module in modules:
        filename = getattr(module, "__file__", None)
        if not isinstance(filename, str) or not filename:
            continue
        if filename.endswith((".pyc", ".pyo")):
            filename = filename[:-1]
        filename = os.path.abspath(filename)
        if os.path.realpath(filename).startswith(_STDLIB) and "site-packages" not in filename:
            continue
        files.add(filename)
    return files


def _mtime(path: str) -> float | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns + st.st_size * 1e-3  # size too: a same-second rewrite of another length


class Reloader:
    """Watches a growing set of files; see the module docstring."""

    def __init__(self, settle: float = SETTLE, use_inotify: bool = True) -> None:
        self.settle = settle
        self.files: set[str] = set()
        self._stamps: dict[str, float | None] = {}
        self._pending: set[str] = set()
        self._last_event = 0.0
        self._last_scan = 0.0
        self._inotify = None
        self._dir_watch: dict[int, str] = {}
        self._watched_dirs: set[str] = set()
        if use_inotify and inotify_simple is not None and sys.platform.startswith("linux"):
            try:
                self._inotify = inotify_simple.INotify()
                os.set_inheritable(self._inotify.fileno(), False)
            except OSError as exc:
                log.warning("inotify unavailable (%s); polling files for --reload", exc)
                self._inotify = None

    @property
    def backend(self) -> str:
        return "inotify" if self._inotify is not None else "polling"

    def fileno(self) -> int | None:
        """The descriptor to watch for readability, or None in polling mode."""
        return self._inotify.fileno() if self._inotify is not None else None

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def add(self, paths: Iterable[str]) -> int:
        """Starts watching ``paths`` (already watched ones are skipped); returns how many were new."""
        added = 0
        for path in paths:
            path = os.path.abspath(path)
            if path in self.files:
                continue
            self.files.add(path)
            self._stamps[path] = _mtime(path)
            added += 1
            if self._inotify is not None:
                self._watch_dir(os.path.dirname(path))
        return added

    def _watch_dir(self, directory: str) -> None:
        if directory in self._watched_dirs or self._inotify is None:
            return
        flags = inotify_simple.flags
        mask = (flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE | flags.DELETE | flags.MODIFY
                | flags.ATTRIB)
        try:
            wd = self._inotify.add_watch(directory, mask)
        except OSError as exc:
            log.warning("cannot watch %s (%s); its files are polled", directory, exc)
            return
        self._dir_watch[wd] = directory
        self._watched_dirs.add(directory)

    def on_readable(self) -> None:
        """Reads pending inotify events (non-blocking) and notes changed watched files."""
        if self._inotify is None:
            return
        for event in self._inotify.read(timeout=0):
            directory = self._dir_watch.get(event.wd)
            if directory is None or not event.name:
                continue
            path = os.path.join(directory, event.name)
            if path in self.files:
                self._note(path)

    def _note(self, path: str) -> None:
        stamp = _mtime(path)
        if stamp == self._stamps.get(path) and stamp is not None:
            return  # touched, not changed (e.g. an ATTRIB event for a read)
        self._stamps[path] = stamp
        self._pending.add(path)
        self._last_event = time.monotonic()

    def _scan(self) -> None:
        watched_by_inotify = self._watched_dirs
        for path in list(self.files):
            if self._inotify is not None and os.path.dirname(path) in watched_by_inotify:
                continue
            if _mtime(path) != self._stamps.get(path):
                self._note(path)

    def poll(self) -> list[str]:
        """Call on every loop turn: the changed files once they have settled, else ``[]``."""
        now = time.monotonic()
        if now - self._last_scan >= POLL_INTERVAL:
            self._last_scan = now
            self._scan()
        if self._pending and now - self._last_event >= self.settle:
            changed = sorted(self._pending)
            self._pending.clear()
            return changed
        return []

    def timeout(self) -> float:
        """Seconds until ``poll`` has something to do (for the loop's select timeout)."""
        now = time.monotonic()
        wait = POLL_INTERVAL - (now - self._last_scan)
        if self._pending:
            wait = min(wait, self.settle - (now - self._last_event))
        return max(0.0, wait)


def invalidate_bytecode(path: str) -> None:
    """Removes ``path``'s cached bytecode so the next import compiles the new source.

    Python trusts a ``.pyc`` whose recorded mtime (whole seconds) and size match the source; an edit
    within the same second that keeps the size would otherwise import the old code.
    """
    if not path.endswith(".py"):
        return
    try:
        from importlib.util import cache_from_source

        os.unlink(cache_from_source(path))
    except (OSError, NotImplementedError, ValueError):
        pass
