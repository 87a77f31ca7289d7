"""The server's own log (spawning/logs.py): --error-log-file for the controller and its workers,
without --daemonize, and --log-format json, through real servers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, http_request

from spawning.logs import JsonFormatter, LineHandler


def _wait_for(path: Path, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            break
        time.sleep(0.05)
    return path.read_text() if path.exists() else ""


def test_error_log_file_has_controller_and_worker_lines(spawn, tmp_path: Path) -> None:
    log_path = tmp_path / "error.log"
    server = spawn("core_app.application", "-s", "1", "--error-log-file", str(log_path))
    assert http_request(server.port, "/v/error")[0] == 500
    text = _wait_for(log_path, "secret-traceback-marker")
    worker = server.workers()[0]
    assert any(f"[{server.pid}] [INFO] " in line and f"listening on http://127.0.0.1:{server.port}" in line
               for line in text.splitlines()), text
    assert f"[{worker}] [ERROR] error in WSGI app for GET /v/error" in text
    assert "Traceback" in text and "RuntimeError: secret-traceback-marker" in text
    assert "listening on" not in server.stderr and "secret-traceback-marker" not in server.stderr


def test_json_log_lines(spawn, tmp_path: Path) -> None:
    """--log-format json (and gunicorn's --error-logfile spelling): one object per line, the
    traceback in "exception", not on lines of its own."""
    log_path = tmp_path / "error.log"
    server = spawn("core_app.application", "-s", "1", "--log-format", "json", "--error-logfile",
                   str(log_path))
    assert http_request(server.port, "/v/error")[0] == 500
    text = _wait_for(log_path, "secret-traceback-marker")
    records = [json.loads(line) for line in text.splitlines()]
    assert all({"time", "level", "pid", "message"} <= set(r) for r in records), records
    listening = next(r for r in records if "listening on" in r["message"])
    assert listening["pid"] == server.pid and listening["level"] == "INFO"
    failed = next(r for r in records if r["message"].startswith("error in WSGI app"))
    assert failed["pid"] == server.workers()[0] and failed["level"] == "ERROR"
    assert failed["exception"].startswith("Traceback") and "secret-traceback-marker" in failed["exception"]
    assert failed["time"][:2] == "20" and failed["time"][10] == "T"


def test_json_log_on_stderr_by_default(spawn) -> None:
    server = spawn("hello.application", "-s", "1", "--log-format", "json")
    assert server.wait_until(lambda: "listening on" in server.stderr)
    line = next(x for x in server.stderr.splitlines() if "listening on" in x)
    assert json.loads(line)["pid"] == server.pid


def test_unwritable_error_log_is_a_usage_error(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "spawning", "--error-log-file",
                          str(tmp_path / "no" / "such" / "dir.log"), "hello.application"],
                         capture_output=True, text=True, timeout=30, cwd=str(ROOT), check=False)
    assert out.returncode == 2, out
    assert out.stderr.strip().splitlines() == [
        f"spawning: error: --error-log-file {tmp_path}/no/such/dir.log: No such file or directory"]


def test_error_log_lines_are_whole_and_follow_rotation(tmp_path: Path) -> None:
    """A multi-line record is one write (no other process's line lands inside a traceback), and
    a file moved away is replaced by a new one at the path within a second."""
    path = tmp_path / "error.log"
    handler = LineHandler(str(path))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("spawning.test-probe")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
        path.rename(tmp_path / "error.log.1")
        time.sleep(1.05)
        logger.warning("after the move")
    finally:
        logger.removeHandler(handler)
        handler.close()
    (old,) = (tmp_path / "error.log.1").read_text().splitlines()
    assert json.loads(old)["exception"].endswith("ValueError: boom")
    (new,) = path.read_text().splitlines()
    assert json.loads(new)["message"] == "after the move" and json.loads(new)["pid"] == os.getpid()
