"""The stable alias of spawning.green.monkey: ``from spawning import monkey; monkey.patch_all()``.

The patches live in spawning.green.monkey (see its docstring for what is patched and what is not);
this module keeps the name applications and scripts import. It re-exports the public names.
"""

from __future__ import annotations

from .green.monkey import (
    GreenPoll,
    GreenSelector,
    GreenSocket,
    GreenSSLSocket,
    getaddrinfo,
    gethostbyaddr,
    gethostbyname,
    gethostbyname_ex,
    getnameinfo,
    patch_all,
    patch_queue,
    patch_select,
    patch_selectors,
    patch_socket,
    patch_ssl,
    patch_threading,
    patch_time,
    patched,
    select,
)

# Every public name of spawning.green.monkey, as this module had them before the move.
__all__ = [
    "GreenPoll",
    "GreenSSLSocket",
    "GreenSelector",
    "GreenSocket",
    "getaddrinfo",
    "gethostbyaddr",
    "gethostbyname",
    "gethostbyname_ex",
    "getnameinfo",
    "patch_all",
    "patch_queue",
    "patch_select",
    "patch_selectors",
    "patch_socket",
    "patch_ssl",
    "patch_threading",
    "patch_time",
    "patched",
    "select",
]
