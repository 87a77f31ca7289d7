"""``--access-log-format``'s syntax: the named formats and the ``%(x)s`` atoms a format may use.

Writing the lines is ``spawning.wsgi.accesslog``'s business; which formats are valid is a
setting's syntax, so it lives here, where the option's validator can reach it without importing a
layer above. The access log reads ``ATOMS`` and ``ATOM`` from here, so the two cannot disagree.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

__all__ = ["ATOM", "ATOMS", "NAMED", "check_atom", "check_format"]

#: Named formats ``--access-log-format`` accepts besides one made of atoms.
NAMED = ("combined", "common", "json")

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

#: One atom in a format; group 1 is its name (what is between the parentheses).
ATOM = re.compile(r"%\((\{[^}]*\}[ioe]|[^)]*)\)s")


def check_atom(atom: str) -> None:
    """Raises ConfigError unless ``atom`` (an atom's name) is in ``ATOMS`` or names a request
    header, a response header or an environ key (``{name}i``, ``{name}o``, ``{name}e``)."""
    if atom in ATOMS:
        return
    if len(atom) > 3 and atom[0] == "{" and atom[-2] == "}" and atom[-1] in "ioe":
        return
    raise ConfigError(f"unknown access log atom %({atom})s (known: "
                      f"{', '.join(ATOMS)}, {{header}}i, {{header}}o, {{key}}e)")


def check_format(text: str | None) -> str | None:
    """``--access-log-format``'s value, checked: a named format (lowercased) or one made of known
    atoms (ConfigError otherwise); None for no value."""
    if text is None or not str(text).strip():
        return None
    value = str(text)
    if value.strip().lower() in NAMED:
        return value.strip().lower()
    if not ATOM.search(value):
        raise ConfigError(f"{value!r} is neither {', '.join(NAMED)} nor a format of %(x)s atoms")
    for m in ATOM.finditer(value):
        check_atom(m.group(1))
    return value
