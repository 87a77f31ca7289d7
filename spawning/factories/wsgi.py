"""The default factory: a WSGI application named by a dotted path, plus middleware.

The factory contract (other factories, such as paste's and Django's, follow it):

``config_factory(args: dict) -> dict``
    Gets the parsed options (``args['args']`` holds the positional words; every option is present,
    defaults filled in; ``args['set_on_command_line']`` lists the ones set explicitly (on the command
    line, by a ``SPAWNING_*`` variable or in the ``--config`` file), so a factory that reads a file
    of its own can let those win) and returns the server's config dict: the options,
    changed as the factory sees fit, plus ``'app_factory'``, the dotted name of
    ``app_factory(config)``. It runs in the controller, whose copy decides what only the controller
    does (``host``, ``port``, ``bind``, ``processes``, ``reload``, ``watch``, pid file, user...), and
    again in every new worker, whose copy decides the rest (threads, timeouts, limits, the app), so
    a reload sees fresh settings. It must not import the application: forked workers import it
    fresh, which is what makes a reload pick up new code. Files it reads belong in ``watch``, so
    ``--reload=dev`` reloads when they change. Bad input raises ``ConfigError`` (one line, exit 2);
    any other exception is reported the same way (``--log-level debug`` shows the traceback). A
    factory may also set ``'server_class'`` (``'module:Class'``) to serve with another server class.

``app_factory(config: dict) -> WSGI application``
    Runs in each worker after fork: imports the application and wraps it in its middleware. Failure
    raises ``AppLoadError`` with one line for the user (any other exception becomes one too); when
    the first generation cannot boot, the server exits 2 with that line.

Factories shipped: this one (the default), ``spawning.factories.paste.config_factory`` (a PasteDeploy
ini file) and ``spawning.factories.django.config_factory`` (a Django settings module).

Application syntax: ``package.module.app`` (the last component is the attribute; when the module
has no such attribute but ``package.module.app`` is itself a module, its ``application``, as
gunicorn reads ``myproject.wsgi``), ``module:app`` (gunicorn's), ``module:create_app()`` or ``module:create_app('production', debug=False)`` (a call
with literal arguments). Each middleware is a dotted path to ``mw(app) -> app``, applied in order:
the first named is the innermost.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Callable
from typing import Any

from ..errors import AppLoadError, ConfigError

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")
_COLON = re.compile(rf"^(?P<module>{_IDENT}(\.{_IDENT})*):(?P<attr>{_IDENT}(\.{_IDENT})*)"
                    rf"(?P<call>\(.*\))?$", re.DOTALL)


def check_spec(spec: str, what: str = "application") -> None:
    """Raises ``ConfigError`` unless ``spec`` is a syntactically valid object path. Imports nothing."""
    if _COLON.match(spec):
        call = _COLON.match(spec).group("call")  # type: ignore[union-attr]
        if call:
            _parse_call(spec, call)
        return
    if _DOTTED.match(spec) and "." in spec:
        return
    raise ConfigError(f"bad {what} path {spec!r}: expected module.attribute or module:attribute")


def _parse_call(spec: str, call: str) -> tuple[list[Any], dict[str, Any]]:
    try:
        node = ast.parse(f"f{call}", mode="eval").body
    except SyntaxError as exc:
        raise ConfigError(f"bad application path {spec!r}: {exc.msg}") from None
    if not isinstance(node, ast.Call):
        raise ConfigError(f"bad application path {spec!r}: expected a call")
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    except (SyntaxError, ValueError) as exc:
        raise ConfigError(f"bad application path {spec!r}: the call takes only literal arguments "
                          f"({exc})") from None
    return args, kwargs


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _source_files(exc: BaseException) -> list[str]:
    """Files worth watching for a fix: a syntax error's file."""
    filename = getattr(exc, "filename", None)
    return [filename] if isinstance(filename, str) and filename.endswith(".py") else []


def _import(module_name: str, spec: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise AppLoadError(f"cannot import {spec!r}: {_describe(exc)}", _source_files(exc)) from exc


def load_object(spec: str) -> Any:
    """Imports and returns the object ``spec`` names (see the module docstring for the syntax)."""
    match = _COLON.match(spec)
    if match:
        module = _import(match.group("module"), spec)
        obj = module
        for part in match.group("attr").split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise AppLoadError(f"cannot import {spec!r}: module {match.group('module')!r} has no "
                                   f"attribute {match.group('attr')!r}") from None
        if match.group("call"):
            args, kwargs = _parse_call(spec, match.group("call"))
            try:
                obj = obj(*args, **kwargs)
            except Exception as exc:
                raise AppLoadError(f"cannot build {spec!r}: {_describe(exc)}") from exc
        return obj
    if not _DOTTED.match(spec) or "." not in spec:
        raise AppLoadError(f"cannot import {spec!r}: expected module.attribute or module:attribute")
    module_name, _, attr = spec.rpartition(".")
    module = _import(module_name, spec)
    try:
        return getattr(module, attr)
    except AttributeError:
        pass
    # gunicorn's form, "myproject.wsgi": a module alone names its `application`.
    try:
        whole = _import(spec, spec)
    except AppLoadError as exc:
        missing = exc.__cause__
        if not (isinstance(missing, ModuleNotFoundError) and missing.name == spec):
            raise
        whole = None
    if whole is not None and hasattr(whole, "application"):
        return whole.application
    hint = (f" (module {spec!r} has no 'application' either: name the object, {spec}:app)"
            if whole is not None else "")
    raise AppLoadError(f"cannot import {spec!r}: module {module_name!r} has no attribute "
                       f"{attr!r}{hint}") from None


def config_factory(args: dict[str, Any]) -> dict[str, Any]:
    """The default ``config_factory``: checks the application and middleware paths (without importing
    them) and names ``app_factory``."""
    positional = list(args.get("args") or [])
    if not positional:
        raise ConfigError("no application given (for example: spawning myproject.wsgi.application)")
    for index, spec in enumerate(positional):
        check_spec(spec, "application" if index == 0 else "middleware")
    config = dict(args)
    config["app"] = positional[0]
    config["middleware"] = positional[1:]
    config["app_factory"] = "spawning.factories.wsgi.app_factory"
    return config


def app_factory(config: dict[str, Any]) -> Callable[..., Any]:
    """The default ``app_factory``: imports ``config['app']`` and applies ``config['middleware']``."""
    app = load_object(config["app"])
    if not callable(app):
        raise AppLoadError(f"cannot use {config['app']!r}: it is a {type(app).__name__}, not a WSGI "
                           "callable")
    return apply_middleware(app, config.get("middleware") or [])


def apply_middleware(app: Callable[..., Any], specs: list[str]) -> Callable[..., Any]:
    """Wraps app in each middleware (a dotted path to ``mw(app) -> app``), in order."""
    for spec in specs:
        middleware = load_object(spec)
        try:
            app = middleware(app)
        except Exception as exc:
            raise AppLoadError(f"cannot apply middleware {spec!r}: {_describe(exc)}") from exc
    return app
