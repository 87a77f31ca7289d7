"""--reload=dev: edited code is served within 3 s with no failed request; broken code never is."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PyLoad, SpawningProcess, scaled, start_server, wait_until

APP_TEMPLATE = '''
import helper_{tag}


def application(environ, start_response):
    body = ("{version} " + helper_{tag}.WORD).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def _write(path: Path, text: str) -> None:
    # Write then rename, as editors do; the reloader must follow the new inode.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@dataclass
class DevServer:
    server: SpawningProcess
    app_path: Path
    helper_path: Path
    watched: Path
    tag: str

    def body(self) -> bytes:
        return self.server.get("/")[2]


@pytest.fixture
def dev(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DevServer]:
    tag = request.node.name.replace("[", "_").replace("]", "_").replace("-", "_")[-20:]
    app = tmp_path / f"devapp_{tag}.py"
    helper = tmp_path / f"helper_{tag}.py"
    helper.write_text("WORD = 'one'\n")
    app.write_text(APP_TEMPLATE.format(tag=tag, version="v1"))
    watched = tmp_path / "settings.txt"
    watched.write_text("a")
    server = start_server(f"devapp_{tag}.application", "-s", "2", "--reload=dev", "-w", str(watched),
                          extra_path=[str(tmp_path)])
    yield DevServer(server, app, helper, watched, tag)
    server.stop()


def test_edited_app_is_served_within_3_seconds_with_no_failed_request(dev: DevServer) -> None:
    server = dev.server
    assert dev.body() == b"v1 one"
    load = PyLoad(server.port, connections=4).start()
    try:
        time.sleep(0.5)   # the load runs a while on the old code first: let time pass
        _write(dev.app_path, APP_TEMPLATE.format(tag=dev.tag, version="v2"))
        t0 = time.monotonic()
        assert server.wait_until(lambda: dev.body() == b"v2 one", 3.0), server.stderr[-2000:]
        elapsed = time.monotonic() - t0
        # A module imported by the app (not the app itself) is watched as well.
        dev.helper_path.write_text("WORD = 'two!'\n")
        assert server.wait_until(lambda: dev.body() == b"v2 two!", 3.0), server.stderr[-2000:]
        time.sleep(1.5)  # the last old worker drains while loaded
    finally:
        result = load.stop().result()
    assert elapsed < scaled(3.0)
    assert result["requests"] > 50
    assert result["errors"] == 0 and result["non2xx"] == 0, result


def test_syntax_error_keeps_the_old_code_serving_until_fixed(dev: DevServer) -> None:
    server = dev.server
    load = PyLoad(server.port, connections=2).start()
    try:
        _write(dev.app_path, "def application(environ, start_response:\n    pass\n")
        assert server.wait_until(lambda: "reload failed" in server.stderr, 5), server.stderr[-2000:]
        assert "SyntaxError" in server.stderr
        assert dev.body() == b"v1 one"
        time.sleep(0.5)   # and it stays so a while: nothing is to change
        assert dev.body() == b"v1 one"
        # The fix is picked up: the broken file stayed watched although it never imported.
        _write(dev.app_path, APP_TEMPLATE.format(tag=dev.tag, version="v3"))
        assert server.wait_until(lambda: dev.body() == b"v3 one", 3.0), server.stderr[-2000:]
    finally:
        result = load.stop().result()
    assert result["errors"] == 0 and result["non2xx"] == 0, result
    assert server.proc.poll() is None


def test_watch_file_change_reloads(dev: DevServer) -> None:
    server = dev.server
    before = set(server.workers())
    dev.watched.write_text("bb")
    assert server.wait_until(lambda: not before & set(server.workers()), 5), server.stderr[-2000:]
    assert "settings.txt changed" in server.stderr


def test_module_imported_late_is_watched(tmp_path: Path):
    """A module the app imports while serving (not at boot) is reported and watched too."""
    (tmp_path / "late_dep.py").write_text("WORD = 'early'\n")
    (tmp_path / "lateapp.py").write_text(
        "def application(environ, start_response):\n"
        "    import late_dep\n"
        "    body = late_dep.WORD.encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n")
    server = start_server("lateapp.application", "-s", "1", "--reload=dev",
                          extra_path=[str(tmp_path)])
    try:
        assert server.get("/")[2] == b"early"
        time.sleep(1.5)  # the next heartbeat reports late_dep.py
        (tmp_path / "late_dep.py").write_text("WORD = 'late!'\n")
        assert server.wait_until(lambda: server.get("/")[2] == b"late!", 3.0), server.stderr[-2000:]
    finally:
        server.stop()


def test_reloader_polling_backend_sees_changes(tmp_path: Path):
    from spawning.process.reloader import Reloader

    path = tmp_path / "f.py"
    path.write_text("x = 1\n")
    reloader = Reloader(settle=0.05, use_inotify=False)
    reloader.add([str(path)])
    assert reloader.backend == "polling"
    path.write_text("x = 22\n")
    changed = wait_until(reloader.poll, 3, interval=0.05, what="the polling reloader to see the change")
    assert changed == [str(path)]


def test_reloader_inotify_backend_sees_replacement(tmp_path: Path):
    from spawning.process.reloader import Reloader

    reloader = Reloader(settle=0.05)
    if reloader.backend != "inotify":
        pytest.skip("inotify needs Linux and the inotify_simple package")
    path = tmp_path / "g.py"
    path.write_text("x = 1\n")
    reloader.add([str(path)])
    _write(path, "x = 333\n")
    deadline = time.monotonic() + 3
    changed: list[str] = []
    while not changed and time.monotonic() < deadline:
        import select

        fd = reloader.fileno()
        assert fd is not None
        select.select([fd], [], [], 0.05)
        reloader.on_readable()
        changed = reloader.poll()
    reloader.close()
    assert changed == [str(path)]
