"""The ``spawning`` command.

``spawning [options] APP [MIDDLEWARE ...]`` serves an application; ``spawning COMMAND ...`` runs a
subcommand named in ``SUBCOMMANDS`` (a word that is not a dotted path, so it cannot be mistaken for
an application). Adding one is a line of data: its name, the ``module:function`` taking the remaining
arguments and returning an exit code, and a help line.

Errors the user can fix end in one line on stderr and a documented exit code (see
``spawning.errors``): 2 for usage and application load errors, 1 for runtime failures.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import config as config_mod
from . import logs
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ConfigError, Halt

#: name -> (``module:function(argv) -> int``, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "status": ("spawning.status.command:main", "show the status of a running server (see --status-port)"),
}

LOG_FORMAT = logs.TEXT_FORMAT


def setup_logging(level: str, path: str | None = "-", fmt: str | None = "text") -> None:
    """Logs of the controller and workers go to ``path`` (``-``: stderr), one line each, with the
    process id, as text or JSON (``spawning.logs``)."""
    logs.setup(level, path, fmt)


def load_config(args: dict[str, Any]) -> dict[str, Any]:
    """Runs the configured ``config_factory`` on the parsed options (raises ConfigError)."""
    from .worker import import_object

    factory_path = args.get("factory") or "spawning.factories.wsgi.config_factory"
    try:
        factory = import_object(factory_path)
    except Exception as exc:
        logging.getLogger("spawning").debug("cannot import factory %r", factory_path, exc_info=True)
        raise ConfigError(f"cannot import factory {factory_path!r}: {type(exc).__name__}: {exc}") \
            from None
    try:
        config = factory(dict(args))
    except ConfigError:
        raise
    except Exception as exc:
        logging.getLogger("spawning").debug("factory %r failed", factory_path, exc_info=True)
        raise ConfigError(f"factory {factory_path!r} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"factory {factory_path!r} returned {type(config).__name__}, not a dict")
    return config


def run_subcommand(name: str, argv: Sequence[str]) -> int:
    from .worker import import_object

    target, _ = SUBCOMMANDS[name]
    try:
        func = import_object(target)
    except (ImportError, AttributeError):
        sys.stderr.write(f"spawning: the {name!r} command is not available in this installation\n")
        return EXIT_USAGE
    return int(func(list(argv)) or 0)


def prepare_process(options: dict[str, Any], chdir: bool = True) -> None:
    """``--chdir``, then the import path (the working directory, as ``python -m`` has it, after
    ``--pythonpath``'s directories), then ``--env``: all change the controller itself, before the
    application is loaded, and forked workers inherit the result."""
    directory = options.get("chdir")
    if chdir and directory:
        try:
            os.chdir(directory)
        except OSError as exc:
            raise ConfigError(f"--chdir {directory}: {exc.strerror}") from None
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    extra = [p.strip() for item in options.get("pythonpath") or [] for p in item.split(",")]
    for path in reversed([os.path.abspath(p) for p in extra if p]):
        if path not in sys.path:
            sys.path.insert(0, path)
    for pair in options.get("env") or []:
        key, _, value = pair.partition("=")
        os.environ[key] = value


def check_app(config: dict[str, Any]) -> None:
    """``--check-config``: imports and builds the application here, as a worker would; raises
    ``Halt(2)`` with the worker's one line if it cannot."""
    from .errors import AppLoadError
    from .worker import load_app

    try:
        load_app(config)
    except AppLoadError as exc:
        logging.getLogger("spawning").debug("the application failed to load", exc_info=True)
        raise Halt(EXIT_USAGE, f"spawning: {exc}") from None


def serve(argv: Sequence[str]) -> int:
    """Parses options, builds the config and runs the controller until it stops."""
    from .controller import Controller

    settings = config_mod.resolve(argv, os.environ)
    args = settings.values
    # Factories that read a file (paste's ini) let what was set explicitly (command line,
    # environment, --config file) win over it.
    args["set_on_command_line"] = settings.given()
    setup_logging(args["log_level"], args.get("error_log_file"), args.get("log_format"))
    prepare_process(args)
    if args["print_config"] and not args["args"]:  # no application: nothing for a factory to do
        sys.stdout.write(config_mod.describe(settings))
        return EXIT_OK
    config = load_config(args)
    if config.get("chdir") != args.get("chdir"):
        raise ConfigError("chdir: set it on the command line, in the environment or in --config "
                          "(it applies before a factory reads its file)")
    prepare_process(config, chdir=False)  # the factory's file may add to --env and --pythonpath
    if args["print_config"]:
        factory = args.get("factory") or config_mod.defaults()["factory"]
        for opt in config_mod.OPTIONS:
            if opt.name in config and config[opt.name] != settings.values.get(opt.name):
                settings.values[opt.name] = config[opt.name]
                settings.sources[opt.name] = f"factory {factory}"
        sys.stdout.write(config_mod.describe(settings))
        return EXIT_OK
    # The factory's file may set these.
    setup_logging(config.get("log_level") or args["log_level"],
                  config.get("error_log_file") or args.get("error_log_file"),
                  config.get("log_format") or args.get("log_format"))
    if config.get("preload") and config.get("reload") == "dev":
        raise ConfigError("--preload and --reload=dev do not go together: workers forked from a "
                          "controller that imported the app never see a code change")
    if args["check_config"]:
        check_app(config)
        sys.stdout.write(f"spawning: configuration OK; the application {config.get('app')!r} "
                         "loads\n")
        return EXIT_OK
    return Controller(args, config).run()


def run_server(options: dict[str, Any]) -> int:
    """Runs a server from an options dict (``config.defaults()`` / ``config.from_mapping`` shaped),
    for callers that do not come through the command line, such as PasteDeploy's server runner.
    Returns the exit code; ``Halt`` and ``ConfigError`` propagate."""
    from .controller import Controller

    setup_logging(options.get("log_level") or "info", options.get("error_log_file"),
                  options.get("log_format"))
    return Controller(options, load_config(options)).run()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spawning`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return run_subcommand(argv[0], argv[1:])
        return serve(argv)
    except ConfigError as exc:
        sys.stderr.write(f"spawning: error: {exc}\n")
        return EXIT_USAGE
    except Halt as halt:
        if halt.message:
            sys.stderr.write(halt.message.rstrip("\n") + "\n")
        return halt.code
    except KeyboardInterrupt:  # before the controller's handlers are installed
        return EXIT_FAILURE
