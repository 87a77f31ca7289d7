"""``Settings``: the immutable settings every layer reads (``settings.threads``,
``settings.header_timeout``), made from the options table.

``Settings`` is a frozen dataclass generated at import from ``options.OPTIONS``: one field per option,
whose default is the table's (so each default is written once, in the table), plus ``extra``, a
read-only mapping of what a factory's config adds that is not an option (``app``, ``middleware``,
``app_factory``, ``components``, ``server_class``...).

A factory returns a plain dict (that is its public contract, and ``app_factory(config)`` still gets
that dict); ``Settings.from_config`` turns such a dict into settings: a missing key, or ``None`` (and
``""`` for an option with a non-empty default, as an empty ini value), means the default; a number or
flag given as a string is coerced and validated as on the command line; numbers and flags take the
default's type; lists become tuples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .options import BY_NAME, OPTIONS, Option

__all__ = ["Settings"]


def _normalize(opt: Option, raw: Any) -> Any:
    """One option's value from a factory's config, in the shape the table's default has."""
    default = opt.default
    if raw is None or (raw == "" and opt.kind == "value" and default not in (None, "")):
        raw = default
    if isinstance(raw, list):
        return tuple(raw)
    if isinstance(raw, str) and isinstance(default, (bool, int, float)):
        raw = opt.convert(raw)  # a factory passing "4": validated as the command line would
    if isinstance(default, bool):
        return bool(raw)
    if isinstance(default, int) and not isinstance(raw, bool):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


class SettingsBase:
    """What every ``Settings`` has besides its option fields."""

    extra: Mapping[str, Any]

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, **overrides: Any) -> Settings:
        """Settings from a config dict (a factory's result, ``sources.defaults()``-shaped options,
        or a few keys as tests and benchmarks pass them), then ``overrides``."""
        merged = dict(config or {})
        merged.update(overrides)
        values = {name: _normalize(opt, merged[name]) for name, opt in BY_NAME.items() if name in merged}
        extra = {key: value for key, value in merged.items() if key not in BY_NAME}
        return _SettingsClass(**values, extra=MappingProxyType(extra))  # type: ignore[no-any-return]

    def replace(self, **changes: Any) -> Settings:
        """A copy with some options changed (normalized as in ``from_config``)."""
        values = {name: _normalize(BY_NAME[name], value) for name, value in changes.items()}
        return dataclasses.replace(self, **values)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """Every option (tuples as lists, as the config dicts have them), then the extra keys."""
        out: dict[str, Any] = {opt.name: list(value) if isinstance(value := getattr(self, opt.name), tuple)
                               else value for opt in OPTIONS}
        out.update(self.extra)
        return out

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...


def _field(opt: Option) -> tuple[str, Any, Any]:
    default = tuple(opt.default) if isinstance(opt.default, list) else opt.default
    return opt.name, Any, dataclasses.field(default=default)


_SettingsClass = dataclasses.make_dataclass(
    "Settings",
    [_field(opt) for opt in OPTIONS]
    + [("extra", Mapping[str, Any], dataclasses.field(default_factory=lambda: MappingProxyType({}), repr=False))],
    bases=(SettingsBase,),
    frozen=True,
    namespace={"__module__": __name__, "__doc__": "Every option's value, immutable (see the module "
               "docstring). ``Settings()`` is every default; ``Settings.from_config(d)`` reads a "
               "config dict."},
)

if TYPE_CHECKING:
    Settings = SettingsBase
else:
    Settings = _SettingsClass
