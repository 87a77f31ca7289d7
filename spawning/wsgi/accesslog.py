"""The access log: one line per request, in Apache's combined format, a format of gunicorn's atoms,
or JSON lines.

Theory of operation. ``AccessLog.log(environ, status, sent, headers=None)`` is called by the
thread that answered the request, right after it was answered (``spawning.wsgi.handler``, or
the C path's Runner in csrc/py/runner.c). The request's duration is the C core's own measure, read
from a thread-local (``sp_last_duration_us``, set as the request is finished), so neither path
has to carry a start time; it is read only by formats that show it.

Each line goes out in one ``write()`` on an ``O_APPEND`` descriptor: workers and their threads
share the file without interleaving (no Python buffer splits a line, none holds one back). A line
that cannot be written (a full disk, a reader that closed its pipe) is dropped and counted, with
a warning on the server's own log at most once a minute: the log never stops serving. Once a
second the file's path is checked, and if the file was moved or removed (log rotation) it is
opened anew in place of the old descriptor (``dup2``, so no thread ever writes to a closed one).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..logs import LineFile

__all__ = ["ATOMS", "AccessLog", "check_format"]

log = logging.getLogger("spawning")

#: Named formats ``--access-log-format`` accepts besides one made of atoms.
NAMED = ("combined", "common", "json")

#: Seconds between two warnings about dropped lines.
WARN_EVERY = 60.0

#: The atoms a format may use, as ``%(x)s``; ``%({name}i)s``, ``%({name}o)s`` and ``%({name}e)s``
#: name a request header, a response header and an environ key.
ATOMS = {
    "h": "remote address",
    "l": "'-' (identd is not asked)",
    "u": "remote user (REMOTE_USER, else the Basic auth user name), '-' if none",
    "t": "time the line is written, [day/month/year:hour:minute:second zone]",
    "r": "request line (method, path with query as sent, protocol)",
    "m": "request method",
    "U": "path (PATH_INFO, decoded)",
    "q": "query string",
    "H": "protocol (HTTP/1.1)",
    "s": "status code",
    "B": "body bytes sent",
    "b": "body bytes sent, '-' for none",
    "f": "Referer header, '-' if none",
    "a": "User-Agent header, '-' if none",
    "T": "duration, whole seconds",
    "M": "duration, milliseconds",
    "D": "duration, microseconds",
    "L": "duration, seconds with six decimals",
    "p": "worker process id, as <pid>",
}

_ATOM = re.compile(r"%\((\{[^}]*\}[ioe]|[^)]*)\)s")
# Characters a client could use to end a quoted field early or to start a line of its own.
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})


def _quoted(value: str) -> str:
    """A value for a quoted field of the combined line, escaped as Apache does, so that a client
    cannot end the field early and forge the ones after it."""
    if '"' in value or "\\" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"')
    return value


def _safe(value: Any) -> str:
    """Any value for a line of a custom format: quotes, backslashes and control characters
    escaped (a decoded path may hold a newline)."""
    text = value if type(value) is str else str(value)
    return text.translate(_ESCAPES) if _UNSAFE.search(text) else text


def _user(env: dict) -> str | None:
    user = env.get("REMOTE_USER")
    if user:
        return str(user)
    auth = env.get("HTTP_AUTHORIZATION", "")
    if auth[:6].lower() == "basic ":
        import base64
        import binascii

        try:
            return base64.b64decode(auth[6:].strip(), validate=True).decode("latin-1").partition(":")[0]
        except (ValueError, binascii.Error):
            return None
    return None


def _header_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


def _response_header(headers: Any, name: str) -> str | None:
    if headers:
        for k, v in headers:
            if k.lower() == name:
                return v
    return None


# One function per atom: (environ, status code, body bytes, response headers, duration in us,
# the log) -> str. Values a client or the app chose go through _safe.
_Getter = Callable[[dict, str, int, Any, int, "AccessLog"], str]
_GETTERS: dict[str, _Getter] = {
    "h": lambda e, s, b, o, d, lg: e.get("REMOTE_ADDR") or "-",
    "l": lambda e, s, b, o, d, lg: "-",
    "u": lambda e, s, b, o, d, lg: _safe(_user(e) or "-"),
    "t": lambda e, s, b, o, d, lg: "[" + lg.stamp() + "]",
    "r": lambda e, s, b, o, d, lg: _safe(f"{e.get('REQUEST_METHOD', '-')} {e.get('RAW_URI', '')} "
                                         f"{e.get('SERVER_PROTOCOL', '-')}"),
    "m": lambda e, s, b, o, d, lg: _safe(e.get("REQUEST_METHOD", "-")),
    "U": lambda e, s, b, o, d, lg: _safe(e.get("PATH_INFO", "")),
    "q": lambda e, s, b, o, d, lg: _safe(e.get("QUERY_STRING", "")),
    "H": lambda e, s, b, o, d, lg: _safe(e.get("SERVER_PROTOCOL", "-")),
    "s": lambda e, s, b, o, d, lg: s,
    "B": lambda e, s, b, o, d, lg: str(b),
    "b": lambda e, s, b, o, d, lg: str(b) if b else "-",
    "f": lambda e, s, b, o, d, lg: _safe(e.get("HTTP_REFERER", "-")),
    "a": lambda e, s, b, o, d, lg: _safe(e.get("HTTP_USER_AGENT", "-")),
    "T": lambda e, s, b, o, d, lg: str(d // 1000000),
    "M": lambda e, s, b, o, d, lg: str(d // 1000),
    "D": lambda e, s, b, o, d, lg: str(d),
    "L": lambda e, s, b, o, d, lg: f"{d // 1000000}.{d % 1000000:06d}",
    "p": lambda e, s, b, o, d, lg: f"<{lg.pid}>",
}


def _getter(atom: str) -> _Getter:
    """The function for one atom's name (what is between the parentheses); ConfigError if none."""
    if atom in _GETTERS:
        return _GETTERS[atom]
    if len(atom) > 3 and atom[0] == "{" and atom[-2] == "}":
        name, kind = atom[1:-2], atom[-1]
        if kind == "i":
            key = _header_key(name)
            return lambda e, s, b, o, d, lg: _safe(e.get(key, "-"))
        if kind == "o":
            lower = name.lower()
            return lambda e, s, b, o, d, lg: _safe(_response_header(o, lower) or "-")
        if kind == "e":
            return lambda e, s, b, o, d, lg: _safe(e.get(name, "-"))
    raise ConfigError(f"unknown access log atom %({atom})s (known: "
                      f"{', '.join(ATOMS)}, {{header}}i, {{header}}o, {{key}}e)")


def _compile(fmt: str) -> tuple[str, list[_Getter], bool]:
    """A format of atoms as (a %-template with one %s per atom, the atoms' functions, whether any
    needs the duration)."""
    parts: list[str] = []
    getters: list[_Getter] = []
    timed = False
    pos = 0
    for m in _ATOM.finditer(fmt):
        # Literal text: '%%' reads as '%' (as in a Python %-format); any other '%' as itself.
        parts.append(fmt[pos:m.start()].replace("%%", "\0").replace("%", "%%").replace("\0", "%%"))
        parts.append("%s")
        getters.append(_getter(m.group(1)))
        timed = timed or m.group(1) in ("T", "M", "D", "L")
        pos = m.end()
    parts.append(fmt[pos:].replace("%%", "\0").replace("%", "%%").replace("\0", "%%"))
    return "".join(parts) + "\n", getters, timed


COMMON = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s'


def check_format(text: str | None) -> str | None:
    """``--access-log-format``'s value, checked: a named format or one made of known atoms
    (ConfigError otherwise)."""
    if text is None or not str(text).strip():
        return None
    value = str(text)
    if value.strip().lower() in NAMED:
        return value.strip().lower()
    if not _ATOM.search(value):
        raise ConfigError(f"{value!r} is neither {', '.join(NAMED)} nor a format of %(x)s atoms")
    _compile(value)
    return value


class AccessLog:
    """One line per request to a file, or to standard output for ``-``; ``/dev/null`` (or no
    path) turns it off (``enabled`` is False and nobody calls ``log``).

    ``fmt``: ``None`` or ``combined`` (Apache's combined line, the default), ``common``, ``json``,
    or a format of atoms (``ATOMS``). ``dropped`` counts the lines that could not be written."""

    pid: int            # the worker's, for %(p)s and the JSON lines

    def __init__(self, path: str | None, fmt: str | None = None) -> None:
        self.enabled = path not in (None, "", "/dev/null")
        self.path = str(path) if path else ""
        self.file: LineFile | None = None
        self.pid = os.getpid()
        self._warned = 0.0
        self._clock: tuple[int, str] = (0, "")
        self._iso: tuple[int, str] = (0, "")
        self._last_duration: Callable[[], int] | None = None
        fmt = check_format(fmt)         # before opening: a refused format leaves no descriptor
        if self.enabled:
            self.file = LineFile(self.path)
        # The combined line has its own method, the cheapest: the log is on every request's path.
        if fmt in (None, "combined"):
            self.log = self._combined    # type: ignore[method-assign]
            return
        from .._core import lib
        self._last_duration = lib.sp_last_duration_us
        if fmt == "json":
            self.log = self._json        # type: ignore[method-assign]
            return
        self._template, self._getters, self._timed = _compile(COMMON if fmt == "common" else fmt)
        self.log = self._custom          # type: ignore[method-assign]

    def log(self, env: dict, status: str | None, size: int, headers: Any = None) -> None:
        """Writes the request's line (replaced per instance by the format's method)."""

    # ---- the formats ---------------------------------------------------------------------------

    def _combined(self, env: dict, status: str | None, size: int, headers: Any = None) -> None:
        code = status[:3] if status else "500"
        sec, stamp = self._clock
        if int(_now()) != sec:
            stamp = self.stamp()
        method = env["REQUEST_METHOD"]
        if method == "HEAD" or code == "204" or code == "304":
            size = 0                    # %b counts body bytes sent: none went
        line = '%s - - [%s] "%s %s %s" %s %s "%s" "%s"\n' % (  # noqa: UP031 -- the cheapest here
            env.get("REMOTE_ADDR") or "-", stamp, method, _quoted(env.get("RAW_URI", "")),
            env["SERVER_PROTOCOL"], code, size or "-", _quoted(env.get("HTTP_REFERER", "-")),
            _quoted(env.get("HTTP_USER_AGENT", "-")))
        self.write(line.encode("utf-8", "backslashreplace"))

    def _custom(self, env: dict, status: str | None, size: int, headers: Any = None) -> None:
        code = status[:3] if status else "500"
        if env.get("REQUEST_METHOD") == "HEAD" or code == "204" or code == "304":
            size = 0
        took = self._last_duration() if self._timed else 0  # type: ignore[misc]
        line = self._template % tuple(g(env, code, size, headers, took, self) for g in self._getters)
        self.write(line.encode("utf-8", "backslashreplace"))

    def _json(self, env: dict, status: str | None, size: int, headers: Any = None) -> None:
        code = status[:3] if status else "500"
        method = env.get("REQUEST_METHOD")
        if method == "HEAD" or code == "204" or code == "304":
            size = 0
        sec, iso = self._iso
        if int(_now()) != sec:
            self.stamp()
            iso = self._iso[1]
        record = {
            "time": iso,
            "remote_addr": env.get("REMOTE_ADDR") or None,
            "remote_user": _user(env),
            "request": f"{method} {env.get('RAW_URI', '')} {env.get('SERVER_PROTOCOL')}",
            "method": method,
            "path": env.get("PATH_INFO", ""),
            "query": env.get("QUERY_STRING", ""),
            "protocol": env.get("SERVER_PROTOCOL"),
            "status": int(code) if code.isdigit() else code,
            "bytes": size,
            "referer": env.get("HTTP_REFERER"),
            "user_agent": env.get("HTTP_USER_AGENT"),
            "duration_us": self._last_duration(),  # type: ignore[misc]
            "pid": self.pid,
        }
        self.write((json.dumps(record) + "\n").encode("ascii"))

    # ---- time ------------------------------------------------------------------------------------

    def stamp(self) -> str:
        """The current second as the combined format writes it (cached for the second; the JSON
        format's ISO 8601 form is made with it). Once a second, too, the file is checked for
        rotation."""
        now = int(_now())
        sec, stamp = self._clock
        if now == sec:
            return stamp
        local = time.localtime(now)
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", local)
        zone = time.strftime("%z", local)
        self._iso = (now, time.strftime("%Y-%m-%dT%H:%M:%S", local) + zone[:3] + ":" + zone[3:])
        self._clock = (now, stamp)      # one tuple: threads read the second and its text together
        if self.file is not None:
            exc = self.file.check_rotated()
            if exc is not None:
                log.warning("access log %s: cannot reopen: %s", self.path, exc.strerror)
        return stamp

    # ---- writing ---------------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Lines that could not be written."""
        return self.file.dropped if self.file is not None else 0

    def write(self, data: bytes) -> None:
        """Writes one whole line; drops it (counted, and said at most every WARN_EVERY seconds)
        if that fails: a full disk or a closed pipe never stops serving."""
        exc = self.file.write(data)   # type: ignore[union-attr]
        if exc is None:
            return
        now = _monotonic()
        if now - self._warned >= WARN_EVERY or not self._warned:
            self._warned = now
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            log.warning("access log %s: %d line(s) dropped so far (%s); serving goes on",
                        self.path, self.dropped, reason)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


_now = time.time
_monotonic = time.monotonic

