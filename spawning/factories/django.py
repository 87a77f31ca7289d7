"""Django: ``spawning --factory=spawning.factories.django.config_factory mysite.settings [middleware ...]``.

``config_factory`` runs in the controller: it checks that the settings module can be found on
``sys.path`` (the working directory is on it, as for ``manage.py``) without importing it or Django,
so a reload's workers import both fresh. ``app_factory`` runs in each worker after fork: it sets
``DJANGO_SETTINGS_MODULE``, and ``django.core.wsgi.get_wsgi_application()`` calls ``django.setup()``
and returns Django's WSGI handler, wrapped in the middleware named after the settings module (each a
dotted ``mw(app) -> app``, as for the default factory).

Without this factory, ``spawning mysite.wsgi:application`` serves the ``wsgi.py`` that
``django-admin startproject`` writes, which does the same thing; the factory saves writing one and
reports a misspelt settings module before any worker starts. Static files are not served either way:
collect them and let the front web server (or WhiteNoise) serve them, as Django's deployment
checklist says.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from ..errors import AppLoadError, ConfigError
from .wsgi import apply_middleware, check_spec

__all__ = ["app_factory", "config_factory", "find_module"]

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def find_module(name: str) -> str | None:
    """Returns ``None`` if module ``name`` can be found, else the first missing component.

    Unlike ``importlib.util.find_spec``, imports nothing: parent packages are looked up with the
    import system's finders, not executed.
    """
    if name in sys.modules:
        return None
    parts = name.split(".")
    search: Any = None
    for index in range(len(parts)):
        prefix = ".".join(parts[:index + 1])
        if index == 0:
            spec = importlib.util.find_spec(prefix)  # top level: finds, does not import
        else:
            spec = None
            for finder in sys.meta_path:
                find_spec = getattr(finder, "find_spec", None)
                if find_spec is None:
                    continue
                spec = find_spec(prefix, search)
                if spec is not None:
                    break
        if spec is None:
            return prefix
        search = spec.submodule_search_locations
        if search is None and index < len(parts) - 1:
            return ".".join(parts[:index + 2])  # a module, not a package: it has no submodules
    return None


def config_factory(args: dict[str, Any]) -> dict[str, Any]:
    """``args['args']`` is ``SETTINGS_MODULE [middleware ...]``; returns the config."""
    positional = list(args.get("args") or [])
    if not positional:
        raise ConfigError("no Django settings module given (for example: spawning --factory="
                          "spawning.factories.django.config_factory mysite.settings)")
    settings, *middleware = positional
    if not _MODULE.match(settings):
        raise ConfigError(f"bad Django settings module {settings!r}: expected a dotted module name "
                          "such as mysite.settings")
    for spec in middleware:
        check_spec(spec, "middleware")
    if importlib.util.find_spec("django") is None:
        raise ConfigError("the Django factory needs Django: pip install 'spawning[django]'")
    missing = find_module(settings)
    if missing is not None:
        raise ConfigError(f"unknown Django settings module {settings!r}: no module named {missing!r} "
                          f"on the Python path (run from the project's directory or set PYTHONPATH)")
    config = dict(args)
    config.update(app=settings, django_settings=settings, middleware=middleware,
                  app_factory="spawning.factories.django.app_factory")
    return config


def app_factory(config: dict[str, Any]) -> Callable[..., Any]:
    """Runs in each worker: sets ``DJANGO_SETTINGS_MODULE`` and returns Django's WSGI handler."""
    settings = config["django_settings"]
    os.environ["DJANGO_SETTINGS_MODULE"] = settings
    try:
        from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]

        app: Callable[..., Any] = get_wsgi_application()  # calls django.setup()
    except Exception as exc:  # settings, app registry, models: one line for the user
        filename = getattr(exc, "filename", None)
        files = [filename] if isinstance(filename, str) and filename.endswith(".py") else []
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise AppLoadError(f"cannot start Django with settings {settings!r}: {reason}", files) from exc
    return apply_middleware(app, config.get("middleware") or [])
