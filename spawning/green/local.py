"""``local``: ``threading.local`` whose attributes are per greenlet, hence per request in green mode.

Each greenlet keeps a local's attributes in a dict of its own, in its own ``__dict__`` under the
local's key, so that they die with it. On CPython the plain reads (an instance of ``local``
itself, a name its class does not define) are C's (csrc/py/glocal.c, ``LocalBase``); everything
else is the functions below, which C calls, as the Python base does elsewhere."""

from __future__ import annotations

import _thread
from typing import TYPE_CHECKING, Any, TypeVar

from greenlet import getcurrent  # type: ignore[import-untyped]

from .. import _core
from ..wsgi.response import FAST

_local_ids = iter(range(1, 1 << 62))
_L = TypeVar("_L", bound="local")


def _local_dict(self: local) -> dict:
    """The calling greenlet's dict for this local (created, and __init__ run, on first use)."""
    key = object.__getattribute__(self, "_local__key")
    gd = getcurrent().__dict__
    d = gd.get(key)
    if d is None:
        d = gd[key] = {}
        object.__setattr__(self, "__dict__", d)
        cls = type(self)
        if cls.__init__ is not object.__init__:
            args, kw = object.__getattribute__(self, "_local__args")
            cls.__init__(self, *args, **kw)
    return d


# The general way, under the local's lock: the instance's __dict__ becomes the calling greenlet's
# dict, and object's attribute machinery does the rest (a subclass's descriptors, class names).

def _getattr_slow(self: local, name: str) -> Any:
    with object.__getattribute__(self, "_local__lock"):
        object.__setattr__(self, "__dict__", _local_dict(self))
        return object.__getattribute__(self, name)


def _setattr_slow(self: local, name: str, value: Any) -> None:
    if name == "__dict__":
        raise AttributeError(f"{type(self).__name__!r} object attribute '__dict__' is read-only")
    with object.__getattribute__(self, "_local__lock"):
        object.__setattr__(self, "__dict__", _local_dict(self))
        object.__setattr__(self, name, value)


def _delattr_slow(self: local, name: str) -> None:
    if name == "__dict__":
        raise AttributeError(f"{type(self).__name__!r} object attribute '__dict__' is read-only")
    with object.__getattribute__(self, "_local__lock"):
        object.__setattr__(self, "__dict__", _local_dict(self))
        object.__delattr__(self, name)


class _PyLocalBase:
    """local's plain reads where csrc/py/glocal.c's LocalBase is not built (PyPy,
    SPAWNING_NO_PYFAST=1)."""

    __slots__ = ("_local__key",)

    def __getattribute__(self, name: str) -> Any:
        # A plain local (no subclass, whose descriptors would have a say) read for a name that is
        # no attribute of its class: the answer is the calling greenlet's dict's alone, so it is
        # read there, without the lock and the swap of __dict__ (a lookup Django's connections
        # make on every request in green mode). A miss raises what object.__getattribute__ would.
        if type(self) is local and type(name) is str and name not in _CLASS_NAMES:
            d = getcurrent().__dict__.get(object.__getattribute__(self, "_local__key"))
            if d is not None:
                try:
                    return d[name]
                except KeyError:
                    raise AttributeError(f"'local' object has no attribute '{name}'") from None
        return _getattr_slow(self, name)  # type: ignore[arg-type]


if TYPE_CHECKING:     # the C base has the Python one's attributes
    _LocalBase = _PyLocalBase
else:
    _LocalBase = _core.LocalBase if FAST else _PyLocalBase


class local(_LocalBase):
    """``threading.local`` whose attributes are per greenlet (hence per request in green mode; each
    OS thread's main greenlet keeps it per thread elsewhere)."""

    __slots__ = ("__dict__", "__weakref__", "_local__args", "_local__lock")

    def __new__(cls: type[_L], *args: Any, **kw: Any) -> _L:  # noqa: PYI019 (typing.Self needs 3.11)
        if (args or kw) and cls.__init__ is object.__init__:
            raise TypeError("Initialization arguments are not supported")
        self = _LocalBase.__new__(cls)
        key = f"_spawning_local_{next(_local_ids)}"
        object.__setattr__(self, "_local__key", key)
        object.__setattr__(self, "_local__args", (args, kw))
        object.__setattr__(self, "_local__lock", _thread.RLock())
        getcurrent().__dict__[key] = object.__getattribute__(self, "__dict__")
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        # As in _PyLocalBase.__getattribute__: such a name is the instance dict's, which is the
        # greenlet's. (In Python on CPython too: object.__setattr__, which the general way uses,
        # refuses a type whose C base sets attributes its own way.)
        if type(self) is local and type(name) is str and name not in _CLASS_NAMES:
            d = getcurrent().__dict__.get(object.__getattribute__(self, "_local__key"))
            if d is not None:
                d[name] = value
                return
        _setattr_slow(self, name, value)

    def __delattr__(self, name: str) -> None:
        _delattr_slow(self, name)


# Every name local's class (and its bases) defines: reading or setting one may go through a
# descriptor (__class__, the slots) or find a class attribute, so it takes the general way. Taken
# once: nothing adds attributes to this class (subclasses, which may, always take the general way).
_CLASS_NAMES = frozenset(name for klass in local.__mro__ for name in vars(klass))

if FAST:
    _core.LocalBase._bind(local, _CLASS_NAMES, _getattr_slow)
