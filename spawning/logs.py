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

import json
import logging
import os
import sys
import time
from typing import Any

from .errors import ConfigError

__all__ = ["TEXT_FORMAT", "JsonFormatter", "LineHandler", "setup"]

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


class LineHandler(logging.Handler):
    """Writes each record whole, in one ``write()``, to a file opened for appending."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.dropped = 0
        self._checked = 0.0
        self.fd = -1
        self._ident = (0, 0)
        self.fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        return fd

    def _check_rotated(self) -> None:
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                return
        except OSError:
            pass
        try:
            fd = self._open()
        except OSError:
            return              # a directory gone or not writable: go on with the old file
        os.dup2(fd, self.fd)    # in place: the number another thread may be using stays valid
        os.close(fd)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            now = time.monotonic()
            if now - self._checked >= 1.0:
                self._checked = now
                self._check_rotated()
            sent = os.write(self.fd, data)
            while sent < len(data):    # a signal cut it short: the rest, or it joins the next
                sent += os.write(self.fd, data[sent:])
        except OSError:
            self.dropped += 1   # a full disk: nowhere to say so
        except Exception:   # noqa: BLE001 -- as logging's own handlers: report, never raise
            self.handleError(record)

    def close(self) -> None:
        super().close()
        if self.fd > 2:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


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
