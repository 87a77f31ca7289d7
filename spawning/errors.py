"""Exceptions and exit codes shared by the command line, the controller and the workers, and the
one check of the C core's ``-errno`` results (``check``, ``errno_name``).

Exit codes of the ``spawning`` command (documented in the README):

====  ==========================================================================
0     clean shutdown (SIGTERM, SIGINT, SIGQUIT)
1     runtime failure: an address could not be bound, the pid file is held by a
      live process, privileges could not be dropped, daemonizing failed
2     usage error (bad option value, no application) or the application could
      not be loaded when the server first started
====  ==========================================================================

A worker process that cannot load the application exits with ``WORKER_BOOT_ERROR`` after telling its
controller why; the controller never passes that code on as its own.
"""

from __future__ import annotations

import errno
import os

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: Exit status of a worker that could not load the application (gunicorn uses the same number).
WORKER_BOOT_ERROR = 3


class Halt(BaseException):
    """Stops the controller with an exit code and, optionally, one line for stderr.

    A ``BaseException`` (as gunicorn's ``HaltServer``) so that no ``except Exception`` on the way up
    swallows it: raising it anywhere in the controller unwinds to the command line, which prints the
    message and exits with ``code``.
    """

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message or f"exit {self.code}"


class ConfigError(ValueError):
    """A setting has a bad value. The message is one line, fit for the user (exit code 2)."""


class AppLoadError(Exception):
    """The application (or its middleware) could not be imported or built.

    ``str()`` is the one line shown to the user, e.g.
    ``cannot import 'x.y': ModuleNotFoundError: No module named 'x'``. ``files`` lists source files
    involved (a file with a syntax error), so ``--reload=dev`` can watch them for the fix.
    """

    def __init__(self, message: str, files: list[str] | None = None) -> None:
        super().__init__(message)
        self.files = files or []


def check(rc: int, what: str = "spawning core") -> int:
    """Raises OSError for a negative -errno result from C, returns rc otherwise."""
    if rc < 0:
        code = -rc
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return rc


def errno_name(rc: int) -> str:
    """'ECONNRESET (Connection reset by peer)' for a -errno result."""
    code = -rc if rc < 0 else rc
    return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"
