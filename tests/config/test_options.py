"""The option table and what is built from it: argparse, ini coercion, the README table."""

from __future__ import annotations

import pytest

from spawning.config import options, sources
from spawning.config.addresses import Address, parse_address
from spawning.errors import ConfigError

REQUIRED = ["args", "factory", "host", "port", "bind", "backlog", "defer_accept", "processes", "threads", "reload", "watch", "max_memory", "max_worker_memory", "max_age", "max_requests", "max_requests_jitter", "timeout", "graceful_timeout", "access_log_file", "access_log_format", "log_level", "no_keepalive", "keepalive_timeout", "header_timeout", "body_timeout", "send_timeout", "max_connections", "max_body_size", "limit_request_line", "limit_request_fields", "limit_request_field_size", "max_head_size", "pidfile", "user", "group", "daemonize", "stdout", "stderr", "status_port", "status_host", "coverage", "no_monkey_patch", "gc_freeze"]


def test_table_has_every_setting_the_core_reads():
    names = [opt.name for opt in options.OPTIONS]
    assert len(names) == len(set(names)), "duplicate option names"
    assert set(REQUIRED) <= set(names)
    flags = [flag for opt in options.OPTIONS for flag in opt.flags]
    assert len(flags) == len(set(flags)), "duplicate flags"
    for opt in options.OPTIONS:
        assert opt.section in options.SECTIONS
        assert opt.help and opt.help[0].islower() or opt.help[0] in "'-"


def test_defaults():
    values = sources.parse_args(["app.application"])
    assert values["args"] == ["app.application"]
    assert values["port"] == 8080 and values["host"] == "127.0.0.1"
    assert values["processes"] == 4 and values["threads"] == 4
    assert values["timeout"] == 30 and values["graceful_timeout"] == 30
    assert values["max_body_size"] == 1 << 30
    assert values["reload"] is None and values["bind"] == [] and values["watch"] == []
    assert values["access_log_file"] == "-" and values["log_level"] == "info"
    assert values["factory"] == "spawning.factories.wsgi.config_factory"
    assert set(values) == {opt.name for opt in options.OPTIONS}


def test_short_flags_and_repeatables():
    values = sources.parse_args(["-s", "2", "-t", "0", "-p", "9000", "-i", "0.0.0.0", "-m", "512",
                                "-a", "60", "-l", "/dev/null", "-w", "a.ini", "-w", "b.ini",
                                "-b", "unix:/tmp/x.sock", "-b", "[::1]:9001", "--reload=dev",
                                "-c", "--no-keepalive", "mod.app", "mw.one", "mw.two"])
    assert values["processes"] == 2 and values["threads"] == 0 and values["port"] == 9000
    assert values["max_memory"] == 512 and values["max_age"] == 60
    assert values["watch"] == ["a.ini", "b.ini"]
    assert values["bind"] == ["unix:/tmp/x.sock", "[::1]:9001"]
    assert values["reload"] == "dev" and values["coverage"] and values["no_keepalive"]
    assert values["args"] == ["mod.app", "mw.one", "mw.two"]


def test_sizes_accept_suffixes():
    assert options.size_bytes("64K") == 65536
    assert options.size_bytes("1G") == 1 << 30
    assert options.size_bytes("0") == 0
    with pytest.raises(ConfigError):
        options.size_bytes("-5")
    with pytest.raises(ConfigError):
        options.size_bytes("12Q")


def test_from_mapping_reads_ini_style_settings():
    values = sources.from_mapping({"max-requests": "100", "graceful_timeout": "5", "daemonize": "yes",
                                  "bind": "127.0.0.1:1 unix:/tmp/s", "reload": "dev"})
    assert values["max_requests"] == 100 and values["graceful_timeout"] == 5.0
    assert values["daemonize"] is True
    assert values["bind"] == ["127.0.0.1:1", "unix:/tmp/s"]
    assert values["processes"] == 4  # untouched default
    with pytest.raises(ConfigError, match="unknown setting"):
        sources.from_mapping({"no_such": "1"})
    assert "use" not in sources.from_mapping({"use": "egg:Spawning"}, ignore_unknown=True)
    with pytest.raises(ConfigError, match="setting port: invalid value 'x'"):
        sources.from_mapping({"port": "x"})
    # Long flags are keys too; one-shot flags and another settings file are not settings.
    assert sources.from_mapping({"workers": "3", "keep-alive": "2"})["processes"] == 3
    with pytest.raises(ConfigError, match="command-line flag only"):
        sources.from_mapping({"print-config": "true"})
    with pytest.raises(ConfigError, match="cannot name another"):
        sources.from_mapping({"config": "x.toml"})


def test_markdown_table_covers_every_option():
    table = options.markdown_table()
    for opt in options.OPTIONS:
        for flag in opt.flags:
            assert f"`{flag}`" in table
    assert "| `-p`, `--port` | `port` | `8080` |" in table
    assert "`1G`" in table


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:80", Address("tcp", host="127.0.0.1", port=80)),
    ("[::1]:8080", Address("tcp", host="::1", port=8080)),
    (":9000", Address("tcp", host="0.0.0.0", port=9000)),
    ("9000", Address("tcp", host="0.0.0.0", port=9000)),
    ("localhost", Address("tcp", host="localhost", port=8080)),
    ("unix:/run/app.sock", Address("unix", path="/run/app.sock")),
    ("fd://3", Address("fd", fd=3)),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["::1:80", "host:port", "[::1", "unix:", "fd://x", "h:70000"])
def test_parse_address_refuses(text):
    with pytest.raises(ConfigError):
        parse_address(text)


def test_gen_options_table_tool_prints_the_table():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "tools" / "gen_options_table.py")],
                         capture_output=True, text=True, timeout=30, cwd=str(root),
                         check=False).stdout
    assert out.strip() == options.markdown_table().strip()


def test_resolve_takes_each_option_from_the_first_source_that_sets_it(tmp_path):
    conf = tmp_path / "s.toml"
    conf.write_text('processes = 2\nthreads = 8\nbacklog = 7\nenv = {A = "1", B = "x y"}\n')
    environ = {"SPAWNING_THREADS": "3", "SPAWNING_BACKLOG": "9", "SPAWNING_NO_PYFAST": "1",
               "SPAWNING_EXPECT_BACKEND": "poll", "OTHER": "x"}
    settings = sources.resolve(["--config", str(conf), "--backlog", "11", "m.app"], environ)
    assert settings.values["processes"] == 2 and settings.sources["processes"] == f"file {conf}"
    assert settings.values["threads"] == 3
    assert settings.sources["threads"] == "environment SPAWNING_THREADS"
    assert settings.values["backlog"] == 11 and settings.sources["backlog"] == "command line"
    assert settings.values["env"] == ["A=1", "B=x y"]
    assert settings.values["port"] == 8080 and settings.sources["port"] == "default"
    assert settings.given() == ["args", "backlog", "config", "env", "processes", "threads"]
    with pytest.raises(ConfigError, match="^SPAWNING_THREADS: invalid value 'many'"):
        sources.resolve(["m.app"], {"SPAWNING_THREADS": "many"})
    with pytest.raises(ConfigError, match="SPAWNING_PROCESSES and SPAWNING_WORKERS both set"):
        sources.resolve(["m.app"], {"SPAWNING_WORKERS": "2", "SPAWNING_PROCESSES": "3"})


def test_help_texts_leave_the_default_to_the_table():
    """--help appends "(default: ...)" itself: a help text that says it too shows it twice."""
    for opt in options.OPTIONS:
        assert "default:" not in opt.help and "(default" not in opt.help, opt.name
    assert options.option("status_host").default_text == "--host"
