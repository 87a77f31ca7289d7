"""The options table: every setting of spawning, as data.

``OPTIONS`` holds one ``Option`` per setting: its name (the key factories, ini sections, TOML files
and ``SPAWNING_*`` variables use, and the ``Settings`` attribute every layer reads), its
command-line flags, how a string becomes a value (and which values are refused), its default (written
here and nowhere else), a one-line help text and the section it belongs to. The argparse parser
(``sources``), the immutable ``Settings`` (``settings``) and the README's option table
(``markdown_table``, printed by ``tools/gen_options_table.py``) are all made from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .accesslog_format import check_format
from .addresses import parse_address
from .proxies import parse_allow

# ---- value types: str -> value, ValueError/ConfigError with a reason on bad input ------------------


def _int_range(lo: int, hi: int | None = None, what: str = "a whole number") -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(str(text).strip(), 10)
        except ValueError:
            raise ConfigError(f"{text!r} is not {what}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}-{hi}" if hi is not None else f">= {lo}"
            raise ConfigError(f"{value} is out of range ({bound})")
        return value
    convert.__name__ = "integer"
    return convert


def seconds(text: str) -> float:
    """A non-negative duration in seconds (``0`` usually means "off")."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ConfigError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{text!r} must be a finite number of seconds >= 0")
    return value


def megabytes(text: str) -> float:
    """A non-negative size in MB (2**20 bytes); ``0`` means "off"."""
    try:
        value = float(str(text).strip().upper().removesuffix("MB").removesuffix("M"))
    except ValueError:
        raise ConfigError(f"{text!r} is not a number of megabytes") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{text!r} must be a number of megabytes >= 0")
    return value


_SIZE_SUFFIXES = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20,
                  "MB": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def size_bytes(text: str) -> int:
    """A size in bytes, optionally with a binary suffix: ``65536``, ``64K``, ``1G``."""
    raw = str(text).strip().upper()
    digits = raw.rstrip("BKMGI")
    suffix = raw[len(digits):]
    try:
        value = int(float(digits) * _SIZE_SUFFIXES[suffix])
    except (ValueError, KeyError):
        raise ConfigError(f"{text!r} is not a size (bytes, or with K/M/G)") from None
    if value < 0:
        raise ConfigError(f"{text!r} must not be negative")
    return value


def boolean(text: str | bool) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (for ini files; flags take no value)."""
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{text!r} is not a boolean (true/false)")


def address(text: str) -> str:
    """A ``--bind`` address, checked now so a typo is a usage error rather than a bind failure."""
    parse_address(text)
    return str(text).strip()


def choice(*values: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        lowered = str(text).strip().lower()
        if lowered not in values:
            raise ConfigError(f"{text!r} is not one of: {', '.join(values)}")
        return lowered
    convert.__name__ = "choice"
    return convert


def env_pair(text: str) -> str:
    """``KEY=VALUE`` for ``--env``: a key of at least one character, without blanks."""
    key, sep, _ = str(text).partition("=")
    if not sep or not key or any(c.isspace() or c == "\0" for c in key) or "\0" in str(text):
        raise ConfigError(f"{text!r} is not KEY=VALUE")
    return str(text)


def ip_list(text: str) -> str:
    """``--forwarded-allow-ips``: addresses and CIDR blocks, comma-separated, or ``*``."""
    try:
        parse_allow(str(text))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return str(text).strip()


def optional_str(text: str) -> str | None:
    return str(text) if str(text) != "" else None


def access_log_format(text: str) -> str | None:
    """``--access-log-format``: a named format or one of known atoms, checked now so that a typo
    is a usage error rather than a line of dashes."""
    return check_format(text)


def url_path(text: str) -> str | None:
    """A path as requests name it (``/healthz``): it starts with ``/`` and holds no blank or
    control character; empty means none."""
    value = str(text).strip()
    if not value:
        return None
    if not value.startswith("/") or any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in value):
        raise ConfigError(f"{text!r} is not a path starting with / (no blanks)")
    return value


def reload_mode(text: str) -> str | None:
    lowered = str(text).strip().lower()
    if lowered in ("", "off", "none", "no"):
        return None
    if lowered == "dev":
        return "dev"
    raise ConfigError(f"{text!r} is not a reload mode (dev, off)")


port = _int_range(0, 65535, "a port number")
non_negative = _int_range(0)
positive = _int_range(1)


# ---- the table --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One setting. ``kind`` is how the command line takes it:

    ``value`` (one value), ``append`` (repeatable, a list), ``flag`` (no value, True when given),
    ``positional`` (the remaining words). ``cli=False`` settings exist only in ini files and for
    factories.
    """

    name: str
    flags: tuple[str, ...]
    default: Any
    help: str
    section: str
    type: Callable[[str], Any] = str
    kind: str = "value"
    metavar: str | None = None
    cli: bool = True
    #: What ``--help`` and the README show as the default when the value alone does not say it
    #: (``--status-host`` defaults to ``--host``): the help text then leaves the default out.
    default_text: str | None = None
    #: A one-shot action of the command line (``--print-config``): not read from the environment
    #: or a file, where it would change what every start does.
    cli_only: bool = False

    def convert(self, raw: Any) -> Any:
        """Coerces a string (or an already typed value) to this option's value, or raises ConfigError."""
        if self.kind == "flag":
            return boolean(raw)
        if self.kind in ("append", "positional"):
            items = raw.split() if isinstance(raw, str) else list(raw or [])
            return [self.type(item) for item in items]
        if raw is None:
            return None
        if isinstance(raw, str):
            return self.type(raw)
        return self.type(str(raw))

    @property
    def display_flags(self) -> str:
        return ", ".join(self.flags) if self.flags else self.name


SECTIONS = (
    "Application",
    "Configuration",
    "Listening",
    "Behind a proxy",
    "Processes",
    "Reloading and recycling",
    "Timeouts and limits",
    "Logging",
    "Process hygiene",
    "Status service",
    "Debugging",
)

GiB = 1 << 30

OPTIONS: tuple[Option, ...] = (
    # Application
    Option("args", (), [], "the application as a dotted path (module.app or module:app), then "
           "middleware, each a dotted path to mw(app) -> app, applied in order", "Application",
           kind="positional", metavar="APP [MIDDLEWARE ...]"),
    Option("factory", ("-f", "--factory"), "spawning.factories.wsgi.config_factory",
           "dotted path to config_factory(args) -> config; it names the app_factory each worker calls",
           "Application", metavar="DOTTED"),
    Option("threads", ("-t", "--threads"), 4,
           "application threads per worker process; 0 runs each request in a green thread",
           "Application", type=non_negative, metavar="N"),
    Option("no_monkey_patch", ("--no-monkey-patch",), False,
           "in green mode (--threads 0), do not patch the standard library for cooperative I/O",
           "Application", kind="flag"),
    Option("chdir", ("--chdir",), None, "change to this directory before loading the application "
           "(relative paths in other settings, such as the pid file, are then read from there)",
           "Application", type=optional_str, metavar="DIR", default_text="the current directory"),
    Option("pythonpath", ("--pythonpath",), [], "directories to put first on sys.path, comma-"
           "separated, repeatable", "Application", kind="append", metavar="DIR[,DIR...]"),
    Option("env", ("-e", "--env"), [], "set an environment variable in the controller, before the "
           "application loads (workers inherit it); repeatable", "Application", type=env_pair,
           kind="append", metavar="KEY=VALUE"),
    Option("preload", ("--preload",), False, "import the application in the controller, before "
           "forking (workers share its memory; a reload then cannot pick up code changes: those "
           "need a full restart)", "Application", kind="flag"),
    Option("gc_freeze", ("--gc-freeze",), False, "once the application is loaded, before serving, "
           "collect garbage and move every object left to the collector's permanent generation "
           "(gc.freeze()): full collections no longer walk the objects the application made while "
           "loading, at the price of never collecting cyclic garbage among them; with --preload "
           "the controller does it too, before forking, so that those pages stay shared",
           "Application", kind="flag"),
    # Configuration
    Option("config", ("--config",), None, "read settings from this TOML file (the option names "
           "as keys); the command line and SPAWNING_* environment variables win over it",
           "Configuration", type=optional_str, metavar="FILE.toml"),
    Option("check_config", ("--check-config",), False, "load the settings and the application, "
           "then exit: 0 if both load, 2 with the reason", "Configuration", kind="flag",
           cli_only=True),
    Option("print_config", ("--print-config",), False, "print every effective setting and where "
           "it came from (command line, environment, file, default), then exit",
           "Configuration", kind="flag", cli_only=True),
    # Listening
    Option("host", ("-i", "--host"), "127.0.0.1", "interface to listen on (ignored with --bind)",
           "Listening", metavar="HOST"),
    Option("port", ("-p", "--port"), 8080,
           "port to listen on (ignored with --bind); 0 = any free port",
           "Listening", type=port, metavar="PORT"),
    Option("bind", ("-b", "--bind"), [], "address to listen on, repeatable: HOST:PORT, [::1]:PORT, "
           "unix:/path or fd://N (proxy://ADDRESS: PROXY protocol there); replaces --host/--port",
           "Listening", type=address, kind="append",
           metavar="ADDRESS"),
    Option("backlog", ("--backlog",), 2048, "listen queue length", "Listening", type=positive,
           metavar="N"),
    Option("defer_accept", ("--defer-accept",), 1, "on Linux (TCP) the kernel hands a new "
           "connection over once its first bytes arrive, or after this many seconds "
           "(TCP_DEFER_ACCEPT, as Apache does by default); 0 = at once", "Listening",
           type=_int_range(0, 3600, "a whole number of seconds"), metavar="SECONDS"),
    Option("no_keepalive", ("--no-keepalive",), False, "close every connection after one response",
           "Listening", kind="flag"),
    Option("max_connections", ("--max-connections",), 10000,
           "most open client connections per worker process", "Listening", type=positive, metavar="N"),
    # Behind a proxy
    Option("forwarded_allow_ips", ("--forwarded-allow-ips",), "127.0.0.1,::1", "peers whose "
           "X-Forwarded-For/-Proto/-Ssl and Forwarded headers are believed (REMOTE_ADDR, "
           "wsgi.url_scheme): comma-separated addresses and CIDR blocks, or '*'; Unix-socket "
           "peers are trusted", "Behind a proxy", type=ip_list, metavar="IPS"),
    Option("forwarded_host", ("--forwarded-host",), False, "also take HTTP_HOST from a trusted "
           "peer's X-Forwarded-Host (or Forwarded host=) and SERVER_PORT from its "
           "X-Forwarded-Port", "Behind a proxy", kind="flag"),
    Option("proxy_protocol", ("--proxy-protocol",), False, "every listener expects the PROXY "
           "protocol (v1 or v2, as HAProxy or AWS NLB send it) before each connection's first "
           "request, and takes REMOTE_ADDR/REMOTE_PORT from it; a connection without one is closed "
           "(one listener alone: --bind proxy://ADDRESS)", "Behind a proxy", kind="flag"),
    Option("no_server_header", ("--no-server-header",), False, "send no Server response header",
           "Behind a proxy", kind="flag"),
    # Processes
    Option("processes", ("-s", "--processes", "--workers"), 4, "worker processes", "Processes", type=positive,
           metavar="N"),
    Option("graceful_timeout", ("--graceful-timeout",), 30.0,
           "seconds a stopping worker may spend finishing its requests before it is killed; "
           "0 = no limit",
           "Processes", type=seconds, metavar="SECONDS"),
    Option("shutdown_delay", ("--shutdown-delay",), 0.0, "after SIGTERM, go on accepting and "
           "serving this many seconds (with /readyz and --health-path answering 503) before the "
           "drain starts, so that a load balancer stops sending first; 0 = off", "Processes",
           type=seconds, metavar="SECONDS"),
    Option("stream_grace", ("--stream-grace",), 5.0, "green mode: requests still running this many "
           "seconds after their worker started draining (SSE streams, long polls) get GeneratorExit "
           "instead of holding it until --graceful-timeout; 0 = off", "Processes", type=seconds,
           metavar="SECONDS"),
    # Reloading and recycling
    Option("reload", ("--reload",), None, "'dev': reload gracefully when an imported Python file or a "
           "--watch file changes", "Reloading and recycling", type=reload_mode, metavar="MODE"),
    Option("watch", ("-w", "--watch"), [], "with --reload=dev, also watch this file (repeatable)",
           "Reloading and recycling", kind="append", metavar="FILE"),
    Option("max_memory", ("-m", "--max-memory"), 0.0, "reload gracefully when all workers together "
           "use more than this many MB (USS), sampled twice a second; 0 = off. Reloads follow each "
           "other at once while fresh workers start under the limit; once they start over it, "
           "reloading cannot help and the pause between reloads grows from 5 s to 60 s",
           "Reloading and recycling", type=megabytes,
           metavar="MB"),
    Option("max_worker_memory", ("--max-worker-memory",), 0.0, "replace a worker that uses more than "
           "this many MB (USS); 0 = off", "Reloading and recycling", type=megabytes, metavar="MB"),
    Option("max_age", ("-a", "--max-age"), 0.0, "replace the worker generation gracefully after this "
           "many seconds; 0 = off", "Reloading and recycling", type=seconds, metavar="SECONDS"),
    Option("max_requests", ("--max-requests",), 0, "replace a worker after it has served this many "
           "requests: it takes no more (the requests already on its open connections are still "
           "answered, with Connection: close) and exits once they are done, while a replacement "
           "starts; 0 = off", "Reloading and recycling", type=non_negative, metavar="N"),
    Option("max_requests_jitter", ("--max-requests-jitter",), 0, "add a random 0..N to each worker's "
           "--max-requests so they do not all restart at once", "Reloading and recycling",
           type=non_negative, metavar="N"),
    # Timeouts and limits
    Option("timeout", ("--timeout",), 30.0, "kill a worker whose oldest request has run this many "
           "seconds (green mode: whose hub an app blocked that long, which stops its heartbeats); "
           "0 = off", "Timeouts and limits",
           type=seconds, metavar="SECONDS"),
    Option("keepalive_timeout", ("--keepalive-timeout", "--keep-alive"), 5.0,
           "seconds an idle keep-alive connection stays open; "
           "0 = no limit (until the client closes it; --no-keepalive turns keep-alive off)",
           "Timeouts and limits", type=seconds, metavar="SECONDS"),
    Option("header_timeout", ("--header-timeout",), 10.0, "seconds a client has to send a request "
           "head, from its connect or its first byte (slowloris defence); 0 = off",
           "Timeouts and limits", type=seconds, metavar="SECONDS"),
    Option("body_timeout", ("--body-timeout",), 60.0, "seconds a request body may pause between "
           "reads; 0 = off", "Timeouts and limits", type=seconds, metavar="SECONDS"),
    Option("send_timeout", ("--send-timeout",), 60.0, "seconds a slow client may take to accept more "
           "response bytes; 0 = off", "Timeouts and limits", type=seconds, metavar="SECONDS"),
    Option("max_body_size", ("--max-body-size",), GiB, "largest request body in bytes (K/M/G "
           "suffixes allowed); 0 = unlimited", "Timeouts and limits", type=size_bytes,
           metavar="BYTES"),
    Option("limit_request_line", ("--limit-request-line",), 8190, "longest request line in bytes",
           "Timeouts and limits", type=positive, metavar="BYTES"),
    Option("limit_request_fields", ("--limit-request-fields",), 100, "most header fields in a request",
           "Timeouts and limits", type=positive, metavar="N"),
    Option("limit_request_field_size", ("--limit-request-field-size",), 8190,
           "longest header line in bytes", "Timeouts and limits", type=positive, metavar="BYTES"),
    Option("max_head_size", ("--max-head-size",), 65536, "largest request head (line and headers) "
           "in bytes", "Timeouts and limits", type=positive, metavar="BYTES"),
    Option("limit_chunk_extension", ("--limit-chunk-extension",), 4096, "longest chunk extension "
           "(the ';name=value' after a chunk size) in a chunked request body, in bytes; over it: 400",
           "Timeouts and limits", type=positive, metavar="BYTES"),
    # Logging
    Option("access_log_file", ("-l", "--access-log-file", "--access-logfile"), "-", "access log, one "
           "line per request; '-' = stdout, /dev/null discards", "Logging", metavar="FILE"),
    Option("access_log_format", ("--access-log-format",), None, "access log line format: combined, "
           "common, json (one object per line), or a line of gunicorn's atoms (README, Logs)",
           "Logging", type=access_log_format, metavar="FORMAT", default_text="combined"),
    Option("error_log_file", ("--error-log-file", "--error-logfile"), "-", "the server's own log "
           "(controller and workers); '-' = stderr", "Logging", metavar="FILE"),
    Option("log_format", ("--log-format",), "text", "the server's own log lines: text, or json (one "
           "object per line: time, level, pid, message, exception)", "Logging",
           type=choice("text", "json"), metavar="FORMAT"),
    Option("log_level", ("--log-level",), "info", "debug, info, warning, error or critical",
           "Logging", type=choice("debug", "info", "warning", "error", "critical"), metavar="LEVEL"),
    # Process hygiene
    Option("pidfile", ("--pidfile",), None, "write the controller's pid here; refuse to start if "
           "it names a live process", "Process hygiene", type=optional_str, metavar="FILE"),
    Option("user", ("--user",), None, "switch to this user (name or uid) after binding",
           "Process hygiene", type=optional_str, metavar="USER"),
    Option("group", ("--group",), None, "switch to this group (name or gid) after binding",
           "Process hygiene", type=optional_str, metavar="GROUP"),
    Option("daemonize", ("--daemonize",), False, "detach from the terminal and run in the background",
           "Process hygiene", kind="flag"),
    Option("stdout", ("--stdout",), None, "with --daemonize, append standard output to this file",
           "Process hygiene", type=optional_str, metavar="FILE"),
    Option("stderr", ("--stderr",), None, "with --daemonize, append standard error to this file",
           "Process hygiene", type=optional_str, metavar="FILE"),
    # Status service
    Option("status_port", ("--status-port",), 0, "serve the status page on this port; 0 = off",
           "Status service", type=port, metavar="PORT"),
    Option("status_host", ("--status-host",), None, "interface for the status page",
           "Status service", type=optional_str, metavar="HOST", default_text="--host"),
    Option("health_path", ("--health-path",), None, "answer this path on the application port "
           "without calling the app: 200 'ok' while serving, 503 once shutting down (for load "
           "balancers that probe only that port)", "Status service", type=url_path, metavar="PATH"),
    # Debugging
    Option("coverage", ("-c", "--coverage"), False, "record code coverage in each worker (needs the "
           "coverage package)", "Debugging", kind="flag"),
)

BY_NAME = {opt.name: opt for opt in OPTIONS}


def _setting_keys() -> dict[str, Option]:
    """Names a file, an ini section or the environment may use for each option: its name, then its
    long flags (``workers`` for ``--workers``, ``keep_alive``), dashes as underscores."""
    keys = dict(BY_NAME)
    for opt in OPTIONS:
        for flag in opt.flags:
            if flag.startswith("--"):
                keys.setdefault(flag[2:].replace("-", "_"), opt)
    return keys


KEYS = _setting_keys()


def lookup(key: str) -> Option | None:
    """The option a settings key names (``max-requests``, ``max_requests``, ``workers``), or None."""
    return KEYS.get(key.strip().replace("-", "_").lower())


def option(name: str) -> Option:
    """The option named ``name`` (dashes or underscores)."""
    return BY_NAME[name.replace("-", "_")]


def defaults() -> dict[str, Any]:
    """Every option at its default (lists copied, so callers may mutate them)."""
    return {opt.name: list(opt.default) if isinstance(opt.default, list) else opt.default
            for opt in OPTIONS}


# ---- documentation -------------------------------------------------------------------------------------


def show_default(opt: Option) -> str:
    if opt.default_text is not None:
        return opt.default_text
    if opt.kind == "flag":
        return "off"
    if opt.default in (None, [], ""):
        return "none"
    if opt.type is size_bytes and isinstance(opt.default, int) and opt.default % GiB == 0:
        return f"{opt.default // GiB}G"
    if isinstance(opt.default, float) and opt.default.is_integer():
        return str(int(opt.default))
    return str(opt.default)


def markdown_table(options: Iterable[Option] = OPTIONS) -> str:
    """The README's option table: one Markdown table per section."""
    lines: list[str] = []
    by_section: dict[str, list[Option]] = {}
    for opt in options:
        by_section.setdefault(opt.section, []).append(opt)
    for section in SECTIONS:
        if section not in by_section:
            continue
        lines += [f"### {section}", "", "| option | key (ini, TOML) | default | meaning |",
                  "| --- | --- | --- | --- |"]
        for opt in by_section[section]:
            flags = ", ".join(f"`{f}`" for f in opt.flags) if opt.flags else f"`{opt.metavar}`"
            if opt.kind == "append":
                flags += " (repeatable)"
            default = "" if opt.kind == "positional" else f"`{show_default(opt)}`"
            ini = "" if opt.kind == "positional" or opt.cli_only else f"`{opt.name}`"
            lines.append(f"| {flags} | {ini} | {default} | {opt.help.replace('|', '/')} |")
        lines.append("")
    lines.append("`--help` lists these options; `--version` prints the version. Each key is also read "
                 "from a `--config` TOML file and from the environment as `SPAWNING_<KEY>` (upper "
                 "case: `SPAWNING_MAX_REQUESTS=1000`). Exit codes: 0 clean shutdown, 1 runtime or bind "
                 "failure, 2 usage error or application load failure.")
    return "\n".join(lines)
