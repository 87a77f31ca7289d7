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
from .errors import EXIT_FAILURE, EXIT_USAGE, ConfigError, Halt

#: name -> (``module:function(argv) -> int``, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "status": ("spawning.status:main", "show the status of a running server (see --status-port)"),
}

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


def setup_logging(level: str) -> None:
    """Logs of the controller and workers go to stderr, one line each, with the process id."""
    logger = logging.getLogger("spawning")
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    if not any(getattr(h, "_spawning", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._spawning = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


def load_config(args: dict[str, Any]) -> dict[str, Any]:
    """Runs the configured ``config_factory`` on the parsed options (raises ConfigError)."""
    from .worker import import_object

    factory_path = args.get("factory") or "spawning.wsgi_factory.config_factory"
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


def serve(argv: Sequence[str]) -> int:
    """Parses options, builds the config and runs the controller until it stops."""
    from .controller import Controller

    args = config_mod.parse_args(argv)
    # Factories that read a file (paste's ini) let what the command line says win over it.
    args["set_on_command_line"] = sorted(vars(config_mod.build_parser().parse_args(list(argv))))
    setup_logging(args["log_level"])
    # As `python -m` does: the application is imported relative to the working directory.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    config = load_config(args)
    setup_logging(config.get("log_level") or args["log_level"])  # the factory's file may set it
    return Controller(args, config).run()


def run_server(options: dict[str, Any]) -> int:
    """Runs a server from an options dict (``config.defaults()`` / ``config.from_mapping`` shaped),
    for callers that do not come through the command line, such as PasteDeploy's server runner.
    Returns the exit code; ``Halt`` and ``ConfigError`` propagate."""
    from .controller import Controller

    setup_logging(options.get("log_level") or "info")
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
