"""The server's own log (the ``spawning`` logger, of the controller and its workers): where it goes
(``--error-log-file``, stderr by default) and how its lines read (``--log-format``: text, or JSON
with one object per line for log shippers).

The controller sets it up before it forks, so workers inherit the handler. A file is opened with
``O_APPEND`` and each record (a traceback included) goes out in one ``write()``, so the lines of
several processes never interleave; once a second at most the path is checked, and a file moved or
removed by log rotation is opened anew. A record that cannot be written is dropped: the log never
stops the server.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import threading
import time
from typing import Any

from .errors import ConfigError

__all__ = ["TEXT_FORMAT", "JsonFormatter", "LineFile", "LineHandler", "setup"]

#: The text format's line: time, process id, level, message.
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


def iso_time(when: float) -> str:
    """``2026-12-06T20:46:22.123+00:00``: local time with its offset, to the millisecond."""
    local = time.localtime(when)
    zone = time.strftime("%z", local)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{int(when % 1 * 1000):03d}"
            + zone[:3] + ":" + zone[3:])


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time``, ``level``, ``pid``, ``message``, and
    ``exception`` (the traceback's text) when the record has one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": iso_time(record.created), "level": record.levelname,
                               "pid": record.process, "message": record.getMessage()}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc)


class LineFile:
    """A log file of whole lines: opened for appending (``-``: standard output), each line written
    in one ``write()`` (the rest after a short one, which only a line over a pipe's atomic size
    can suffer), and opened anew in place, under the same descriptor number, when log rotation
    moved or removed it. The one owner of these rules, for the server's log (LineHandler) and the
    access log (spawning.wsgi.accesslog)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dropped = 0            # lines that could not be written
        self._ident: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self.fd = 1 if path == "-" else self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        return fd

    def check_rotated(self) -> OSError | None:
        """Opens the path anew if it no longer names the file written to. Returns the error of a
        reopen that failed for a reason worth reporting (a vanished directory or a refused
        permission is not: the old file goes on)."""
        if self.fd <= 2:
            return None
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                return None
        except OSError:
            pass
        with self._lock:
            try:
                fd = self._open()
            except OSError as exc:
                return None if exc.errno in (errno.ENOENT, errno.EACCES) else exc
            try:
                os.dup2(fd, self.fd, inheritable=False)   # atomic: no thread sees a closed fd
            finally:
                os.close(fd)
        return None

    def write(self, data: bytes) -> OSError | None:
        """Writes one whole line; drops it (counted) and returns the error if that fails."""
        try:
            sent = _write(self.fd, data)
            while sent < len(data):    # a signal cut it short: the rest, or it joins the next
                sent += _write(self.fd, data[sent:])
        except OSError as exc:
            self.dropped += 1
            return exc
        return None

    def close(self) -> None:
        if self.fd > 2:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = -1


_write = os.write


class LineHandler(logging.Handler):
    """Writes each record whole, in one ``write()``, to a file opened for appending."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.file = LineFile(path)
        self._checked = 0.0

    @property
    def dropped(self) -> int:
        return self.file.dropped

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            now = time.monotonic()
            if now - self._checked >= 1.0:
                self._checked = now
                self.file.check_rotated()
            self.file.write(data)   # a full disk drops the record: nowhere to say so
        except Exception:   # noqa: BLE001 -- as logging's own handlers: report, never raise
            self.handleError(record)

    def close(self) -> None:
        super().close()
        self.file.close()


def setup(level: str, path: str | None = "-", fmt: str | None = "text") -> None:
    """Points the ``spawning`` logger at ``path`` (``-``: stderr) in ``fmt`` (``text``/``json``)
    at ``level``. Called again with other settings (a factory's file may give them), it replaces
    its handler; a path that cannot be opened raises ConfigError."""
    logger = logging.getLogger("spawning")
    logger.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    path = path or "-"
    fmt = fmt or "text"
    current = [h for h in logger.handlers if getattr(h, "_spawning", None) is not None]
    if any(h._spawning == (path, fmt) for h in current):  # type: ignore[attr-defined]
        return
    if path == "-":
        # The stream object, not descriptor 2: what replaces sys.stderr (a test's capture) sees it.
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = LineHandler(path)
        except OSError as exc:
            raise ConfigError(f"--error-log-file {path}: {exc.strerror}") from None
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler._spawning = (path, fmt)  # type: ignore[attr-defined]
    for old in current:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.propagate = False
