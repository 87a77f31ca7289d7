"""Where settings come from: the command line, ``SPAWNING_*`` environment variables, a ``--config``
TOML file, string mappings such as a PasteDeploy ``[server:main]`` section, and the defaults.

- ``build_parser``/``parse_args``: the argparse parser made from ``options.OPTIONS``, hence
  ``spawning --help``;
- ``resolve`` takes each option from the first source that sets it: the command line, a
  ``SPAWNING_<OPTION>`` environment variable (``from_environ``), the ``--config`` TOML file
  (``read_file``), the default; ``describe`` prints the result with its sources (``--print-config``);
- ``from_mapping`` reads string settings (keys spelled with dashes or underscores, values coerced
  and validated exactly as on the command line).

A bad value never produces a traceback: the command line prints one line and exits 2;
``from_mapping``, ``from_environ`` and ``read_file`` raise ``ConfigError`` with one line naming the
key, variable or file.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from ..errors import EXIT_USAGE, ConfigError
from .options import BY_NAME, KEYS, OPTIONS, SECTIONS, Option, defaults, lookup, show_default

# ---- argparse, driven by the table --------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``spawning: error: <reason> (see spawning --help)``, exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def _argparse_type(opt: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return opt.type(text)
        except (ConfigError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {exc}") from None
    convert.__name__ = opt.name
    return convert


def version() -> str:
    """The installed version (the package's ``__version__``, else the distribution's metadata)."""
    try:
        from .. import __version__  # type: ignore[attr-defined]

        return str(__version__)
    except ImportError:
        pass
    try:
        from importlib.metadata import version as dist_version

        return dist_version("spawning")
    except (ImportError, ValueError):
        return "unknown"


def build_parser(prog: str = "spawning") -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with one group per section, built from ``OPTIONS``."""
    parser = _Parser(
        prog=prog,
        description="spawning: a WSGI HTTP/1.1 server with a C core, worker processes and graceful "
                    "reloads.",
        epilog=f"Run '{prog} status --help' for the status command. Exit codes: 0 ok, 1 runtime or "
               "bind failure, 2 usage error or application load failure.",
    )
    parser.add_argument("--version", action="version", version=f"spawning {version()}")
    groups = {section: parser.add_argument_group(section) for section in SECTIONS}
    for opt in OPTIONS:
        if not opt.cli:
            continue
        group = groups[opt.section]
        if opt.kind == "positional":
            group.add_argument(opt.name, nargs="*", metavar="APP", help=opt.help,
                               default=argparse.SUPPRESS)
        elif opt.kind == "flag":
            group.add_argument(*opt.flags, dest=opt.name, action="store_true",
                               default=argparse.SUPPRESS, help=opt.help)
        elif opt.kind == "append":
            group.add_argument(*opt.flags, dest=opt.name, action="append", metavar=opt.metavar,
                               type=_argparse_type(opt), default=argparse.SUPPRESS, help=opt.help)
        else:
            group.add_argument(*opt.flags, dest=opt.name, metavar=opt.metavar,
                               type=_argparse_type(opt), default=argparse.SUPPRESS,
                               help=f"{opt.help} (default: {show_default(opt)})")
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str = "spawning") -> dict[str, Any]:
    """Parses a command line into the options dict (every option present, defaults filled in).

    A bad value prints one line on stderr and exits 2 (``SystemExit``).
    """
    values = defaults()
    values.update(_parse_command_line(list(sys.argv[1:] if argv is None else argv), prog))
    return values


def _fail(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.exit(EXIT_USAGE)


def _parse_command_line(argv: list[str], prog: str) -> dict[str, Any]:
    """The options the command line sets (and only those), or one line and exit 2."""
    _refuse_foreign_habits(argv, prog)
    parser = build_parser(prog)
    namespace, extras = parser.parse_known_args(argv)
    if extras:
        parser.error(_unrecognized(extras))
    return vars(namespace)


#: gunicorn flags spawning has no flag of that name for, and what does the job here.
FOREIGN_FLAGS = {
    "-k": "--threads N (N threads a worker) or --threads 0 (green threads)",
    "--worker-class": "--threads N (N threads a worker) or --threads 0 (green threads)",
    "--worker-connections": "--max-connections",
    "-D": "--daemonize",
    "--paste": "--factory spawning.factories.paste.config_factory FILE.ini",
    "--certfile": "a TLS-terminating proxy in front (spawning serves plain HTTP)",
    "--keyfile": "a TLS-terminating proxy in front (spawning serves plain HTTP)",
}


def _unrecognized(extras: list[str]) -> str:
    """argparse's "unrecognized arguments", with the nearest known flag for the first unknown one."""
    unknown = next((word for word in extras if word.startswith("-")), None)
    if unknown is None:
        return f"unrecognized arguments: {' '.join(extras)}"
    flag = unknown.partition("=")[0]
    if flag in FOREIGN_FLAGS:
        return f"unrecognized option {flag}: use {FOREIGN_FLAGS[flag]}"
    if flag == "--log-file" and "error_log_file" in BY_NAME:
        return f"unrecognized option {flag}: use {BY_NAME['error_log_file'].flags[-1]}"
    known = [f for opt in OPTIONS if opt.cli for f in opt.flags] + ["--help", "--version"]
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    return f"unrecognized option {flag}" + (f" (did you mean {close[0]}?)" if close else "")


def _refuse_foreign_habits(argv: list[str], prog: str) -> None:
    """Short flags that mean something else in gunicorn, used the gunicorn way, exit 2 with a hint:
    ``-w 4`` (workers there, --watch here) when no file ``4`` exists, ``-c conf.py`` (a config file
    there, --coverage here, which takes no value), ``-p app.pid`` (a pid file there, the port here),
    ``--reload`` without a mode (a flag there)."""
    takes_value = {flag for opt in OPTIONS if opt.kind in ("value", "append") for flag in opt.flags}
    i = 0
    while i < len(argv):
        word = argv[i]
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if word == "--":
            return
        if word == "-w" or (word.startswith("-w") and word[2:].isdigit()):
            count = word[2:] or following
            if count.isdigit() and not os.path.exists(count):
                _fail(prog, f"-w is --watch here; for {count} worker process"
                            f"{'' if count == '1' else 'es'} use -s {count} / --workers {count}")
        if word == "-c" and following and not following.startswith("-") and (
                following.endswith((".py", ".toml", ".conf", ".cfg")) or os.path.isfile(following)):
            _fail(prog, "-c is --coverage here and takes no value; for a settings file use "
                        f"--config FILE.toml{' (TOML, not Python)' if following.endswith('.py') else ''}")
        if word == "-p" and following and not following.isdigit() and ("." in following or
                                                                      "/" in following):
            _fail(prog, f"-p is --port here; for a pid file use --pidfile {following}")
        if word == "--reload" and (not following or following.startswith("-") or
                                   following.strip().lower() not in ("dev", "off", "none", "no", "")):
            _fail(prog, "--reload takes a mode here: --reload=dev (reload on code changes)")
        i += 2 if word in takes_value else 1


# ---- where settings come from: command line > environment > file > defaults --------------------------

#: ``SPAWNING_<OPTION>`` sets an option (``SPAWNING_PROCESSES=4``, ``SPAWNING_MAX_REQUESTS=1000``).
ENV_PREFIX = "SPAWNING_"
#: Build and test switches with the same prefix: not options, never warned about.
ENV_SWITCHES = frozenset({"SPAWNING_NO_PYFAST", "SPAWNING_SANITIZE", "SPAWNING_FORCE_POLL",
                          "SPAWNING_KQUEUE_SHIM", "SPAWNING_EXPECT_BACKEND"})
COMMAND_LINE = "command line"
DEFAULT = "default"


@dataclass
class Resolved:
    """Every option's value and where it came from: ``command line``, ``environment SPAWNING_X``,
    ``file PATH``, ``default`` (and, once a factory has run, ``factory NAME`` for what it changed)."""

    values: dict[str, Any]
    sources: dict[str, str]

    def given(self) -> list[str]:
        """Options set explicitly (not defaults): a factory reading its own file lets these win."""
        return sorted(name for name, source in self.sources.items() if source != DEFAULT)


def _warn(message: str) -> None:
    sys.stderr.write(f"spawning: warning: {message}\n")


def from_environ(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Options set by ``SPAWNING_*`` variables: name -> (value, variable). A bad value raises
    ``ConfigError`` naming the variable; unknown names are ignored (with a warning when one is
    close to an option's: a typo), as other tools may use the prefix too."""
    found: dict[str, tuple[Any, str]] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var in ENV_SWITCHES:
            continue
        raw = environ[var]
        key = var[len(ENV_PREFIX):]
        opt = lookup(key)
        if opt is None:
            names = [k for k, o in KEYS.items() if not o.cli_only]
            close = difflib.get_close_matches(key.lower(), names, n=1, cutoff=0.8)
            if close:
                _warn(f"{var} is not a setting (did you mean {ENV_PREFIX}{close[0].upper()}?); "
                      "ignored")
            continue
        if opt.cli_only:
            _warn(f"{var}: {opt.flags[-1]} is a command-line flag only; ignored")
            continue
        if opt.name in found:
            raise ConfigError(f"{found[opt.name][1]} and {var} both set {opt.name}")
        try:
            found[opt.name] = (opt.convert(raw), var)
        except ConfigError as exc:
            raise ConfigError(f"{var}: invalid value {raw!r}: {exc}") from None
    return found


def _toml_module() -> Any:
    try:
        import tomllib  # Python 3.11+

        return tomllib
    except ImportError:
        pass
    try:
        import tomli  # type: ignore[import-not-found]

        return tomli
    except ImportError:
        raise ConfigError("reading a TOML file on Python 3.10 needs tomli: pip install tomli") from None


def _from_toml(opt: Option, raw: Any) -> Any:
    """A TOML value in the shape ``Option.convert`` takes (strings, or a list for repeatables)."""
    if isinstance(raw, dict):
        if opt.kind == "append":  # env = {KEY = "value"}
            return [f"{k}={v}" for k, v in raw.items()]
        raise ConfigError("a table is not a value for this setting")
    if isinstance(raw, list):
        if opt.kind in ("append", "positional"):
            return [str(item) for item in raw]
        raise ConfigError("a list is not a value for this setting (it takes one)")
    if isinstance(raw, bool):
        return raw if opt.kind == "flag" else str(raw).lower()
    if opt.kind in ("append", "positional"):
        return [str(raw)]
    return str(raw)


def read_file(path: str) -> dict[str, tuple[Any, str]]:
    """Options a TOML file sets: name -> (value, key). Keys are the option names (dashes or
    underscores, as in a paste ``[server:main]`` section, or a long flag's name); any error raises
    ``ConfigError`` naming the file and key."""
    if path.endswith(".py"):
        raise ConfigError(f"{path}: spawning reads TOML settings files, not Python ones (gunicorn's "
                          "conf.py): write `key = value` lines, as --print-config prints them")
    toml = _toml_module()
    try:
        with open(path, "rb") as f:
            data = toml.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the settings file {path}: {exc.strerror}") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    found: dict[str, tuple[Any, str]] = {}
    for key, raw in data.items():
        opt = lookup(key)
        if opt is None or opt.cli_only or opt.name == "config":
            names = [k for k, o in KEYS.items() if not o.cli_only and o.name != "config"]
            close = difflib.get_close_matches(key.replace("-", "_").lower(), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            what = (f"unknown setting{hint}" if opt is None else "is a command-line flag only"
                    if opt.cli_only else "a settings file cannot name another")
            raise ConfigError(f"{path}: {key}: {what}")
        if opt.name in found:
            raise ConfigError(f"{path}: {found[opt.name][1]} and {key} both set {opt.name}")
        try:
            found[opt.name] = (opt.convert(_from_toml(opt, raw)), key)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {key}: invalid value {raw!r}: {exc}") from None
    return found


def resolve(argv: Sequence[str], environ: Mapping[str, str] | None = None,
            prog: str = "spawning") -> Resolved:
    """Every option from its sources, the first that sets it winning: the command line, then
    ``SPAWNING_*`` environment variables, then the ``--config`` file (``SPAWNING_CONFIG`` may name
    it), then the defaults. A bad command line exits 2 (``SystemExit``); a bad variable or file
    raises ``ConfigError``."""
    environ = os.environ if environ is None else environ
    command_line = _parse_command_line(list(argv), prog)
    from_env = from_environ(environ)
    values = defaults()
    sources = dict.fromkeys(values, DEFAULT)
    path = command_line.get("config") or (from_env["config"][0] if "config" in from_env else None)
    if path:
        for name, (value, _) in read_file(path).items():
            values[name], sources[name] = value, f"file {path}"
    for name, (value, var) in from_env.items():
        values[name], sources[name] = value, f"environment {var}"
    for name, value in command_line.items():
        values[name], sources[name] = value, COMMAND_LINE
    return Resolved(values, sources)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def describe(settings: Resolved) -> str:
    """``--print-config``: one TOML line per option, with its source as a comment (an unset
    option, and ``config``, are comment lines), so the output can serve as a ``--config`` file."""
    lines = []
    for opt in OPTIONS:
        if opt.cli_only or opt.name not in settings.values:
            continue
        value = settings.values[opt.name]
        source = settings.sources.get(opt.name, DEFAULT)
        text = f"# {opt.name} is not set" if value is None else f"{opt.name} = {_toml_value(value)}"
        if opt.name == "config" and value is not None:
            text = f"# {text}"  # names this file: a file naming a file is refused
        lines.append(f"{text:<44} # {source}")
    return "\n".join(lines) + "\n"


def from_mapping(settings: Mapping[str, Any], base: Mapping[str, Any] | None = None,
                 ignore_unknown: bool = False) -> dict[str, Any]:
    """Options from string settings (a paste ``[server:main]`` section, environment-like dicts).

    Keys may use dashes or underscores; values are coerced and validated as on the command line.
    Unknown keys raise ``ConfigError`` unless ``ignore_unknown`` (paste passes ``use``, ``here``...).
    """
    values = dict(base) if base is not None else defaults()
    for key, raw in settings.items():
        opt = lookup(key)
        if opt is None or opt.cli_only or opt.name == "config":
            if ignore_unknown:
                continue
            raise ConfigError(f"unknown setting {key!r}" if opt is None else
                              f"{key!r} is a command-line flag only" if opt.cli_only else
                              f"{key!r}: a settings file cannot name another")
        name = opt.name
        try:
            values[name] = opt.convert(raw)
        except ConfigError as exc:
            raise ConfigError(f"setting {key}: invalid value {raw!r}: {exc}") from None
    return values
