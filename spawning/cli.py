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

from . import logs
from .config import Settings, options, sources
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, AppLoadError, ConfigError, Halt

#: name -> (``module:function(argv) -> int``, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "status": ("spawning.status.command:main", "show the status of a running server (see --status-port)"),
}

LOG_FORMAT = logs.TEXT_FORMAT


def setup_logging(level: str, path: str | None = "-", fmt: str | None = "text") -> None:
    """Logs of the controller and workers go to ``path`` (``-``: stderr), one line each, with the
    process id, as text or JSON (``spawning.logs``)."""
    logs.setup(level, path, fmt)


def run_subcommand(name: str, argv: Sequence[str]) -> int:
    from .process.worker import import_object

    target, _ = SUBCOMMANDS[name]
    try:
        func = import_object(target)
    except (ImportError, AttributeError):
        sys.stderr.write(f"spawning: the {name!r} command is not available in this installation\n")
        return EXIT_USAGE
    return int(func(list(argv)) or 0)


def prepare_process(settings: Settings, chdir: bool = True) -> None:
    """``--chdir``, then the import path (the working directory, as ``python -m`` has it, after
    ``--pythonpath``'s directories), then ``--env``: all change the controller itself, before the
    application is loaded, and forked workers inherit the result."""
    directory = settings.chdir
    if chdir and directory:
        try:
            os.chdir(directory)
        except OSError as exc:
            raise ConfigError(f"--chdir {directory}: {exc.strerror}") from None
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    extra = [p.strip() for item in settings.pythonpath for p in item.split(",")]
    for path in reversed([os.path.abspath(p) for p in extra if p]):
        if path not in sys.path:
            sys.path.insert(0, path)
    for pair in settings.env:
        key, _, value = pair.partition("=")
        os.environ[key] = value


def check_app(config: dict[str, Any]) -> None:
    """``--check-config``: imports and builds the application here, as a worker would; raises
    ``Halt(2)`` with the worker's one line if it cannot."""
    from .process.worker import load_app

    try:
        load_app(config)
    except AppLoadError as exc:
        logging.getLogger("spawning").debug("the application failed to load", exc_info=True)
        raise Halt(EXIT_USAGE, f"spawning: {exc}") from None


def serve(argv: Sequence[str]) -> int:
    """Parses options, builds the config and runs the controller until it stops."""
    from .process.controller import Controller
    from .process.worker import load_config

    resolved = sources.resolve(argv, os.environ)
    args = resolved.values
    # Factories that read a file (paste's ini) let what was set explicitly (command line,
    # environment, --config file) win over it.
    args["set_on_command_line"] = resolved.given()
    given = Settings.from_config(args)
    setup_logging(given.log_level, given.error_log_file, given.log_format)
    prepare_process(given)
    if given.print_config and not given.args:  # no application: nothing for a factory to do
        sys.stdout.write(sources.describe(resolved))
        return EXIT_OK
    config = load_config(args)
    settings = Settings.from_config(config)
    if settings.chdir != given.chdir:
        raise ConfigError("chdir: set it on the command line, in the environment or in --config "
                          "(it applies before a factory reads its file)")
    prepare_process(settings, chdir=False)  # the factory's file may add to --env and --pythonpath
    if given.print_config:
        for opt in options.OPTIONS:
            if opt.name in config and config[opt.name] != resolved.values.get(opt.name):
                resolved.values[opt.name] = config[opt.name]
                resolved.sources[opt.name] = f"factory {given.factory}"
        sys.stdout.write(sources.describe(resolved))
        return EXIT_OK
    # The factory's file may set these.
    setup_logging(settings.log_level, settings.error_log_file, settings.log_format)
    if settings.preload and settings.reload == "dev":
        raise ConfigError("--preload and --reload=dev do not go together: workers forked from a "
                          "controller that imported the app never see a code change")
    if given.check_config:
        check_app(config)
        sys.stdout.write(f"spawning: configuration OK; the application {settings.extra.get('app')!r} "
                         "loads\n")
        return EXIT_OK
    return Controller(args, config).run()


def run_server(options: dict[str, Any]) -> int:
    """Runs a server from an options dict: ``spawning.process.controller.run_server``, kept under
    this name for callers that imported it from here."""
    from .process.controller import run_server as run

    return run(options)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spawning`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return run_subcommand(argv[0], argv[1:])
        return serve(argv)
    except (ConfigError, AppLoadError) as exc:  # a bad setting, or a factory that failed
        sys.stderr.write(f"spawning: error: {exc}\n")
        return EXIT_USAGE
    except Halt as halt:
        if halt.message:
            sys.stderr.write(halt.message.rstrip("\n") + "\n")
        return halt.code
    except KeyboardInterrupt:  # before the controller's handlers are installed
        return EXIT_FAILURE
