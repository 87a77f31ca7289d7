"""PasteDeploy: serve an ini file's application with the settings of its ``[server:main]`` section.

Two ways in, one behaviour:

``spawning --factory=spawning.factories.paste.config_factory development.ini[#APP] [key=value ...]``
    ``config_factory`` reads the ini file in the controller (and again in every new worker) without
    importing the application: it checks the application section exists and takes the server
    settings from ``[server:main]``. Keys are the command line's option names (``processes``,
    ``max-memory`` or ``max_memory``...), validated exactly as on the command line
    (``config.from_mapping``); an option given on the command line, by a ``SPAWNING_*`` variable or
    in a ``--config`` file wins over the ini file. ``APP`` picks
    ``[app:APP]`` (or composite/pipeline/filter-app; default ``main``); ``key=value`` words become
    global_conf, as ``pserve`` treats them. ``app_factory`` runs in each worker after fork and calls
    ``paste.deploy.loadapp``, so a reload imports fresh code. The ini file is added to ``watch``, so
    ``--reload=dev`` (or ``reload = dev`` in the file) reloads when it changes.

``use = egg:Spawning`` in ``[server:main]``, for ``pserve`` and ``paste.deploy.loadserver``
    PasteDeploy calls ``server_runner(wsgi_app, global_conf, **settings)`` with an application it has
    already loaded. Forked workers must not share that one: its modules would never be re-imported
    on a reload, and whatever it opened at load time (threads, database connections) would not
    survive the fork. So the runner does not serve ``wsgi_app``: it replaces the process
    (``os.execv``, same pid, so signals and pid files keep working) with
    ``python -m spawning --factory=spawning.factories.paste.runner_config_factory FILE#APP ...``, the
    section's settings passed as command-line options, and every worker loads the application
    itself. ``FILE`` is ``global_conf['__file__']``; ``APP`` is the one ``pserve`` was asked for
    (``pserve FILE#APP`` or ``--app-name``), otherwise ``main``. Only without a file (an
    ``egg:``/``call:`` URI given directly to ``loadserver``) is the loaded application served as it
    is, from forked workers, with a warning that reloads cannot pick up new code.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .. import config as config_mod
from ..errors import EXIT_USAGE, AppLoadError, ConfigError

log = logging.getLogger("spawning")

__all__ = ["app_factory", "config_factory", "runner_config_factory", "server_runner"]

#: Settings that make no sense inside a ``[server:...]`` section: we are already the factory.
_NOT_SERVER_SETTINGS = ("args", "factory")

#: ``args`` key (set by ``spawning.cli``) naming the options set explicitly: on the command line, by
#: a ``SPAWNING_*`` variable or in the ``--config`` file (the name is older than the last two).
GIVEN_KEY = "set_on_command_line"


# ---- reading the ini file (no application code runs here) -----------------------------------------------


def _loadwsgi() -> Any:
    try:
        from paste.deploy import loadwsgi  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError("the paste factory needs PasteDeploy: pip install 'spawning[paste]'") from None
    return loadwsgi


def parse_target(words: list[str]) -> tuple[str, str, dict[str, str]]:
    """``['dev.ini#api', 'a=b']`` -> (absolute ini path, app name, global_conf). Raises ConfigError."""
    if not words:
        raise ConfigError("no ini file given (for example: spawning --factory="
                          "spawning.factories.paste.config_factory development.ini)")
    target, *rest = words
    target = target.removeprefix("config:")  # paste's own URI spelling is welcome too
    path, _, name = target.partition("#")
    global_conf: dict[str, str] = {}
    for word in rest:
        key, sep, value = word.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value after the ini file, got {word!r}")
        global_conf[key.strip()] = value
    return os.path.abspath(path), name.strip() or "main", global_conf


def load_ini(path: str, global_conf: Mapping[str, str] | None = None) -> Any:
    """Parses ``path`` as PasteDeploy does (a ``loadwsgi.ConfigLoader``); raises ConfigError."""
    loadwsgi = _loadwsgi()
    if not os.path.isfile(path):
        why = "it is a directory" if os.path.isdir(path) else "no such file"
        raise ConfigError(f"cannot read ini file {path}: {why}")
    try:
        loader = loadwsgi.ConfigLoader(path)
    except OSError as exc:
        raise ConfigError(f"cannot read ini file {path}: {exc.strerror}") from None
    except Exception as exc:  # noqa: BLE001 - configparser and decoding errors: the file is bad
        raise ConfigError(f"cannot parse ini file {path}: {_one_line(exc)}") from None
    if global_conf:
        loader.update_defaults(dict(global_conf), overwrite=False)
    return loader


def check_app_section(loader: Any, name: str) -> str:
    """The application section called ``name`` (``app:``, ``composite:``...); raises ConfigError."""
    loadwsgi = _loadwsgi()
    try:
        return str(loader.find_config_section(loadwsgi.APP, name=name))
    except LookupError:
        raise ConfigError(f"{loader.filename}: no application section {name!r} ([app:{name}], "
                          f"[composite:{name}], [pipeline:{name}] or [filter-app:{name}])") from None


def server_section(loader: Any, name: str = "main") -> tuple[str | None, dict[str, str], str | None]:
    """(section, its own settings, its ``use``) for ``[server:NAME]``; (None, {}, None) if absent.

    Own settings are computed as PasteDeploy computes a section's ``local_conf``: [DEFAULT] values
    are global, not the section's; ``get key = name`` copies a global value.
    """
    loadwsgi = _loadwsgi()
    try:
        section = loader.find_config_section(loadwsgi.SERVER, name=name)
    except LookupError:
        return None, {}, None
    parser = loader.parser
    try:
        defaults = parser.defaults()
        settings: dict[str, str] = {}
        for key in parser.options(section):
            if key.startswith("set "):
                continue
            if key.startswith("get "):
                settings[key[4:].strip()] = defaults.get(parser.get(section, key), "")
            elif key not in defaults:
                settings[key] = parser.get(section, key)
    except Exception as exc:  # noqa: BLE001 - interpolation errors name the file already
        raise ConfigError(f"[{section}]: {_one_line(exc)}") from None
    use = settings.pop("use", None)
    return section, settings, use


def is_spawning(use: str | None) -> bool:
    """Whether a ``use = ...`` line names this server (``egg:Spawning``, ``egg:spawning#main``)."""
    if use is None:
        return True
    spec = use.strip().lower()
    return spec in ("egg:spawning", "egg:spawning#main")


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def given_options(args: Mapping[str, Any]) -> set[str]:
    """Options set explicitly (command line, environment, ``--config``). ``spawning.cli`` records
    them; without that record (a factory called from Python), an option counts as given when it
    differs from its default."""
    recorded = args.get(GIVEN_KEY)
    if recorded is not None:
        return set(recorded)
    base = config_mod.defaults()
    return {name for name, value in base.items() if name in args and args[name] != value}


def server_options(loader: Any, args: Mapping[str, Any], name: str = "main") -> dict[str, Any]:
    """``args`` with the ``[server:NAME]`` settings applied underneath the command line's."""
    section, settings, use = server_section(loader, name)
    if section is None:
        return dict(args)
    where = f"{loader.filename} [{section}]"
    foreign = not is_spawning(use)
    for key in settings:
        if key.replace("-", "_") in _NOT_SERVER_SETTINGS:
            raise ConfigError(f"{where}: {key!r} is not a server setting")
    try:
        merged = config_mod.from_mapping(settings, base=args, ignore_unknown=foreign)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if foreign:  # the section belongs to another server (use = egg:waitress...): take what we know
        log.debug("%s is for %s: using only the settings spawning knows", where, use)
    for name_ in given_options(args):
        if name_ in args:
            merged[name_] = args[name_]
    return merged


# ---- the factory contract ------------------------------------------------------------------------------


def _build(args: dict[str, Any], read_server: bool) -> dict[str, Any]:
    path, app_name, global_conf = parse_target(list(args.get("args") or []))
    loader = load_ini(path, global_conf)
    check_app_section(loader, app_name)
    config = server_options(loader, args) if read_server else dict(args)
    watch = list(config.get("watch") or [])
    if path not in watch:
        watch.append(path)
    config.update(watch=watch, app=f"{path}#{app_name}", paste_ini=path, paste_app=app_name,
                  paste_global_conf=global_conf, app_factory="spawning.factories.paste.app_factory")
    return config


def config_factory(args: dict[str, Any]) -> dict[str, Any]:
    """``args['args']`` is ``INI[#APP] [key=value ...]``; returns the config, ``[server:main]``
    settings included (command-line options win). Imports no application code."""
    return _build(args, read_server=True)


def runner_config_factory(args: dict[str, Any]) -> dict[str, Any]:
    """As ``config_factory``, but ignores the file's ``[server:...]`` sections: used by
    ``server_runner``, which passes the section PasteDeploy chose as command-line options."""
    return _build(args, read_server=False)


def _setup_logging(path: str, loader: Any) -> None:
    """Applies the file's ``[loggers]`` configuration, as ``pserve`` does (in each worker)."""
    if not loader.parser.has_section("loggers"):
        return
    import logging.config

    defaults = {"here": os.path.dirname(path), "__file__": path}
    try:
        logging.config.fileConfig(path, defaults, disable_existing_loggers=False)
    except Exception as exc:  # any failure is a bad logging section
        raise AppLoadError(f"{path}: bad logging configuration: {_one_line(exc)}") from exc


def app_factory(config: dict[str, Any]) -> Callable[..., Any]:
    """Runs in each worker: ``paste.deploy.loadapp`` of the configured file and application."""
    path, name = config["paste_ini"], config["paste_app"]
    global_conf = dict(config.get("paste_global_conf") or {})
    try:
        loader = load_ini(path, global_conf)
    except ConfigError as exc:  # the file went away or broke since the controller read it
        raise AppLoadError(str(exc), [path]) from None
    _setup_logging(path, loader)
    from paste.deploy import loadapp  # type: ignore[import-untyped]

    try:
        return loadapp(f"config:{path}", name=name, global_conf=global_conf or None)
    except Exception as exc:  # whatever the app's factories raise: one line
        files = [path]
        filename = getattr(exc, "filename", None)
        if isinstance(filename, str) and filename.endswith(".py"):
            files.append(filename)
        raise AppLoadError(f"cannot load application {name!r} from {path}: {_one_line(exc)}",
                           files) from exc


# ---- use = egg:Spawning --------------------------------------------------------------------------------


def settings_to_argv(settings: Mapping[str, Any], where: str) -> list[str]:
    """The command-line options that say what ``settings`` (a server section) says.

    Values are validated first, so a bad one is reported with the file it came from.
    """
    for key in settings:
        if key.replace("-", "_") in _NOT_SERVER_SETTINGS:
            raise ConfigError(f"{where}: {key!r} is not a server setting")
    try:
        config_mod.from_mapping(settings)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    argv: list[str] = []
    for key, raw in settings.items():
        opt = config_mod.option(key)
        flag = opt.flags[-1]
        if opt.kind == "flag":
            if config_mod.boolean(raw):
                argv.append(flag)
        elif opt.kind == "append":
            for item in (raw.split() if isinstance(raw, str) else list(raw)):
                argv.append(f"{flag}={item}")
        else:
            argv.append(f"{flag}={raw}")
    return argv


def _pserve_app_name(global_conf: Mapping[str, Any]) -> str | None:
    """The application ``pserve`` was told to load (``FILE#APP`` or ``--app-name``), if it is pserve
    that called us. PasteDeploy does not tell a server runner the application's name."""
    if global_conf.get("__script__") != "pserve":
        return None
    try:
        from pyramid.scripts.pserve import PServeCommand  # type: ignore[import-untyped]

        parsed = PServeCommand.parser.parse_args(sys.argv[1:])
    except BaseException:  # noqa: BLE001 - argparse exits on what it cannot parse; then we guess
        return None
    uri = str(getattr(parsed, "config_uri", "") or "")
    return getattr(parsed, "app_name", None) or uri.partition("#")[2] or None


def _extra_python_path() -> str:
    """``sys.path`` entries a fresh interpreter would not have (added by the calling program)."""
    import site
    import sysconfig

    known = [sys.prefix, sys.base_prefix, *site.getsitepackages(), sysconfig.get_paths()["stdlib"]]
    current = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    extra = [p for p in sys.path if p and os.path.isdir(p) and p not in current
             and not any(p == k or p.startswith(k.rstrip(os.sep) + os.sep) for k in known)]
    return os.pathsep.join([*extra, *(p for p in current if p)])


def _fail(message: str) -> None:
    sys.stderr.write(f"spawning: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_USAGE)


def server_runner(wsgi_app: Callable[..., Any], global_conf: dict[str, Any], **settings: Any) -> None:
    """The ``paste.server_runner`` entry point behind ``use = egg:Spawning``.

    Never returns while serving: it re-executes the process as ``python -m spawning`` so that every
    worker loads the application itself (see the module docstring). Bad settings print one line and
    raise ``SystemExit(2)``.
    """
    path = global_conf.get("__file__")
    where = f"{path or 'egg:Spawning'} [server]"
    try:
        options = settings_to_argv(settings, where)
    except ConfigError as exc:
        _fail(str(exc))
    if not path:
        _serve_loaded(wsgi_app, settings)
        return
    path = os.path.abspath(str(path))
    app_name = _pserve_app_name(global_conf) or "main"
    try:
        loader = load_ini(path)
        check_app_section(loader, app_name)
        file_defaults = set(loader.parser.defaults())
    except ConfigError as exc:
        _fail(f"{exc} (egg:Spawning serves the application 'main' of the file it is configured in)")
    conf_words = [f"{k}={v}" for k, v in global_conf.items()
                  if k not in file_defaults and k not in ("here", "__file__", "__script__")]
    argv = [sys.executable, "-m", "spawning", "--factory=spawning.factories.paste.runner_config_factory",
            *options, "--", f"{path}#{app_name}", *conf_words]
    env = dict(os.environ)
    pythonpath = _extra_python_path()
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    try:
        import hupper  # type: ignore[import-untyped]

        if hupper.is_active():
            log.warning("pserve --reload cannot follow spawning's processes; use 'reload = dev' in "
                        "[server:main] instead")
    except ImportError:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


# ---- serving an already loaded application (no ini file to reload from) --------------------------------

_loaded_app: Callable[..., Any] | None = None


def loaded_config_factory(args: dict[str, Any]) -> dict[str, Any]:
    """Factory for ``server_runner`` without a file: serves the application already in memory."""
    config = dict(args)
    config.update(app="(loaded by PasteDeploy)", app_factory="spawning.factories.paste.loaded_app_factory")
    return config


def loaded_app_factory(config: dict[str, Any]) -> Callable[..., Any]:
    if _loaded_app is None:
        raise AppLoadError("no application was handed to the paste server runner")
    return _loaded_app


def _serve_loaded(wsgi_app: Callable[..., Any], settings: Mapping[str, Any]) -> None:
    global _loaded_app
    from ..cli import run_server, setup_logging
    from ..errors import Halt

    _loaded_app = wsgi_app
    options = config_mod.from_mapping(settings)
    options["factory"] = "spawning.factories.paste.loaded_config_factory"
    setup_logging(options["log_level"])
    log.warning("egg:Spawning without an ini file: workers are forked from the application already "
                "loaded, so a reload cannot pick up new code")
    try:
        code = run_server(options)
    except Halt as halt:
        if halt.message:
            sys.stderr.write(halt.message.rstrip("\n") + "\n")
        code = halt.code
    if code:
        raise SystemExit(code)
