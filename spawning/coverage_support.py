"""Code coverage of the workers (``--coverage``) and the combined HTML report at ``/_coverage``.

Theory of operation
-------------------
With ``--coverage`` the controller attaches this component (``attach``) before it forks any worker.
It settles where data goes, in ``args`` (which every forked worker inherits): coverage.py's usual
data file (``$COVERAGE_FILE`` or ``.coverage`` in the working directory), a tag naming this run
(``spawning<controller pid>``), and a private directory for built reports, removed when the
controller exits. Each worker starts coverage.py right after fork (``start``), before it imports the
application, so module-level lines count too, and writes its own data file,
``.coverage.<tag>.<pid>.<random>``, in parallel mode's naming: every ``SAVE_INTERVAL`` seconds from
its housekeeping, when the controller asks (``{"t": "cov_save"}``) and when it exits cleanly.
The files stay after the server stops (``coverage combine && coverage html`` works as usual), and
files of workers that are gone still count, so a report covers every generation of this run.

A report combines this run's data files (older runs' files in the same directory are left out) into
a builder-private directory and renders coverage.py's HTML report there. It runs in a child process
(``python -m spawning.coverage_support``): the controller's loop must never block, and a worker,
whose threads run under the tracer, would build it slowly. The status service starts that child
without waiting (``AsyncReport``); the app port's ``/_coverage`` (``middleware``, in the worker)
waits for it. Both serve the report's files from the same URL layout: ``/_coverage/`` is the index,
``/_coverage/<file>`` the other pages and assets it links to.

The worker-side costs are coverage.py's own (the tracer); with ``--coverage`` off nothing here runs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("spawning")

#: Seconds between two saves of a worker's coverage data.
SAVE_INTERVAL = 2.0
#: The URL prefix of the report (the original spawning served figleaf's report there).
PREFIX = "/_coverage"
#: Seconds a report may take to build.
BUILD_TIMEOUT = 120.0
#: The report builder waits this long for the workers' fresh saves (asked for just before).
SETTLE = 0.3
#: A report younger than this is served again rather than rebuilt.
FRESH = 1.0

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


# ---- the controller's side: the data directory -------------------------------------------------------


class Run:
    """Where one server run keeps its coverage data and reports (see the module docstring)."""

    def __init__(self, data_file: str, tag: str, reports: str) -> None:
        self.data_file = data_file  # the base name of the data files: <data_file>.<tag>.<...>
        self.tag = tag
        self.reports = reports

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Run | None:
        if not args.get("coverage_file"):
            return None
        return cls(args["coverage_file"], args["coverage_tag"], args["coverage_reports"])

    def data_files(self) -> list[str]:
        import glob

        return sorted(glob.glob(glob.escape(f"{self.data_file}.{self.tag}.") + "*"))

    def report_dir(self, owner: str) -> str:
        """Where ``owner`` (``controller`` or a worker's pid) builds its reports: builders never share."""
        return os.path.join(self.reports, f"report-{owner}")


def attach(controller: Any) -> None:
    """Settles where this run's coverage data and reports go (``args``, inherited by the workers)."""
    try:
        import coverage  # noqa: F401 - checked here so the user hears it once, from the controller
    except ImportError:
        log.warning("--coverage: the coverage package is not installed (pip install coverage)")
        return
    reports = tempfile.mkdtemp(prefix="spawning-coverage-")
    data_file = os.path.abspath(os.environ.get("COVERAGE_FILE") or ".coverage")
    controller.args.update(coverage_file=data_file, coverage_tag=f"spawning{os.getpid()}",
                           coverage_reports=reports)
    controller.coverage = Run.from_args(controller.args)
    controller.at_exit(lambda: shutil.rmtree(reports, ignore_errors=True))
    log.info("--coverage: workers record coverage; the report is at %s/ on the app port%s", PREFIX,
             " and the status port" if controller.settings.status_port else "")


# ---- the worker's side: measuring ----------------------------------------------------------------------


class WorkerCoverage:
    """coverage.py running in one worker process; ``save()`` is safe from any thread."""

    def __init__(self, run: Run, green: bool) -> None:
        import coverage

        concurrency = ["thread", "greenlet"] if green else ["thread"]
        self.run = run
        self._lock = threading.Lock()
        self._last_save = time.monotonic()
        suffix = f"{run.tag}.{os.getpid()}.{os.urandom(4).hex()}"  # pids may be reused within a run
        # spawning's own code is left out: the report is about the application.
        self.cov = coverage.Coverage(data_file=run.data_file, data_suffix=suffix,
                                     concurrency=concurrency, omit=[os.path.join(_PACKAGE_DIR, "*")])
        self.cov.start()

    def save(self) -> None:
        with self._lock:
            self._last_save = time.monotonic()
            try:
                self.cov.save()
            except Exception as exc:  # noqa: BLE001 - a failed save must not take the worker down
                log.warning("--coverage: cannot save coverage data: %s", exc)

    def save_if_due(self) -> None:
        """Called about every second by the worker's housekeeping."""
        if time.monotonic() - self._last_save >= SAVE_INTERVAL:
            self.save()

    def stop(self) -> None:
        with self._lock:
            try:
                self.cov.stop()
                self.cov.save()
            except Exception as exc:  # noqa: BLE001
                log.warning("--coverage: cannot save coverage data: %s", exc)


def start(args: dict[str, Any]) -> WorkerCoverage | None:
    """Starts measuring in a freshly forked worker when ``--coverage`` is on (else returns None)."""
    from .config import Settings

    settings = Settings.from_config(args)
    run = Run.from_args(args)
    if not settings.coverage or run is None:
        return None
    try:
        return WorkerCoverage(run, green=settings.threads == 0)
    except Exception as exc:  # noqa: BLE001 - no coverage is better than no worker
        log.warning("--coverage: cannot start coverage: %s", exc)
        return None


# ---- building a report -----------------------------------------------------------------------------------


def builder_argv(run: Run, out_dir: str, settle: float = 0.0) -> list[str]:
    return [sys.executable, "-m", "spawning.coverage_support", run.data_file, run.tag, out_dir,
            f"{settle:g}"]


def build(run: Run, out_dir: str) -> str:
    """Combines the run's data files into an HTML report in ``out_dir``; returns a line saying what
    it did. Runs in the builder child process."""
    import coverage
    from coverage.exceptions import NoDataError

    os.makedirs(out_dir, exist_ok=True)
    combined = os.path.join(out_dir, ".coverage")
    if os.path.exists(combined):
        os.unlink(combined)
    cov = coverage.Coverage(data_file=combined)
    try:
        files = run.data_files()
        if not files:
            raise NoDataError("no data files yet")
        cov.combine(files, keep=True)
        cov.save()
        percent = cov.html_report(directory=out_dir, title="spawning: coverage of the workers")
    except NoDataError:
        with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
            f.write("<!doctype html><meta charset=utf-8><title>coverage</title>"
                    "<p>No coverage data yet: the workers save theirs every "
                    f"{SAVE_INTERVAL:g} seconds.</p>")
        return "ok no data"
    return f"ok {percent:.1f}%"


def _main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: python -m spawning.coverage_support DATA_FILE TAG OUT_DIR [SETTLE]\n")
        return 2
    run, out_dir = Run(argv[0], argv[1], ""), argv[2]
    if len(argv) > 3:
        time.sleep(float(argv[3]))
    try:
        print(build(run, out_dir), flush=True)
    except Exception as exc:  # noqa: BLE001 - reported on the page
        print(f"error {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


# ---- serving a report --------------------------------------------------------------------------------------


def resolve(out_dir: str, path: str) -> tuple[str, str] | None:
    """The file (and its content type) that ``path`` (under ``PREFIX``) names in a built report, or
    None. Only plain names inside ``out_dir`` qualify: no directories, no dot files."""
    name = path[len(PREFIX):].lstrip("/") or "index.html"
    if not _SAFE_NAME.match(name):
        return None
    full = os.path.join(out_dir, name)
    if not os.path.isfile(full):
        return None
    ext = os.path.splitext(name)[1].lower()
    return full, CONTENT_TYPES.get(ext, "application/octet-stream")


def is_index(path: str) -> bool:
    """Whether ``path`` asks for the report's index (which is rebuilt when stale)."""
    return path in (PREFIX + "/", PREFIX + "/index.html")


def _fresh(out_dir: str) -> bool:
    try:
        return time.time() - os.stat(os.path.join(out_dir, "index.html")).st_mtime < FRESH
    except OSError:
        return False


class AsyncReport:
    """A report built by a child process the controller does not wait for.

    ``request(done)`` calls ``done(error_or_None)`` once a report no older than the request is ready;
    ``poll()``, called from the controller's loop, notices the child's end. Requests that arrive
    while a build runs wait for the next one, since the running one may predate their data.
    """

    def __init__(self, run: Run, add_reader: Callable[[int, Callable[[], None]], None],
                 remove_reader: Callable[[int], None]) -> None:
        self.run = run
        self.out_dir = run.report_dir("controller")
        self._add_reader = add_reader
        self._remove_reader = remove_reader
        self._proc: subprocess.Popen[bytes] | None = None
        self._output = b""
        self._started = 0.0
        self._running: list[Callable[[str | None], None]] = []
        self._queued: list[Callable[[str | None], None]] = []

    def request(self, done: Callable[[str | None], None], settle: float = SETTLE) -> None:
        if self._proc is None and _fresh(self.out_dir):
            done(None)
            return
        self._queued.append(done)
        if self._proc is None:
            self._start(settle)

    def _start(self, settle: float) -> None:
        self._running, self._queued = self._queued, []
        self._output = b""
        self._started = time.monotonic()
        try:
            self._proc = subprocess.Popen(builder_argv(self.run, self.out_dir, settle),
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, close_fds=True)
        except OSError as exc:
            self._finish(f"cannot start the report builder: {exc}")
            return
        assert self._proc.stdout is not None
        os.set_blocking(self._proc.stdout.fileno(), False)
        self._add_reader(self._proc.stdout.fileno(), self._on_output)

    def _on_output(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        try:
            data = os.read(proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._output += data[-8192:]
            return
        self._remove_reader(proc.stdout.fileno())
        proc.stdout.close()
        try:
            # The controller's reaper may already have collected it: then poll() says 0, and the
            # output, which ends with "ok" only on success, is what counts.
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        lines = self._output.decode(errors="replace").strip().splitlines()
        last = lines[-1] if lines else ""
        self._finish(None if last.startswith("ok") else (last or "the report builder failed"))

    def poll(self) -> None:
        """Kills a builder that overran ``BUILD_TIMEOUT``."""
        if self._proc is not None and time.monotonic() - self._started > BUILD_TIMEOUT:
            self._proc.kill()

    def _finish(self, error: str | None) -> None:
        if error:
            log.warning("--coverage: %s", error)
        self._proc = None
        waiting, self._running = self._running, []
        for done in waiting:
            done(error)
        if self._queued:
            self._start(SETTLE)

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()


def build_now(run: Run, out_dir: str) -> str | None:
    """Builds a report and waits for it (in a worker); returns an error line or None."""
    if _fresh(out_dir):
        return None
    try:
        proc = subprocess.run(builder_argv(run, out_dir), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=BUILD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot build the report: {exc}"
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    return None if last.startswith("ok") else (last or "the report builder failed")


def middleware(app: Callable[..., Any], worker_cov: WorkerCoverage) -> Callable[..., Any]:
    """Wraps the app in a worker: ``/_coverage`` on the app port serves the combined report."""
    out_dir = worker_cov.run.report_dir(str(os.getpid()))
    build_lock = threading.Lock()

    def coverage_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return app(environ, start_response)
        if path == PREFIX:
            start_response("301 Moved Permanently", [("Location", PREFIX + "/"),
                                                      ("Content-Length", "0")])
            return [b""]
        error = None
        if is_index(path) or not os.path.isdir(out_dir):
            worker_cov.save()
            with build_lock:
                error = build_now(worker_cov.run, out_dir)
        found = resolve(out_dir, path)
        if found is None:
            body = (error or "not found").encode() + b"\n"
            start_response("500 Internal Server Error" if error else "404 Not Found",
                           [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
            return [body]
        with open(found[0], "rb") as f:
            body = f.read()
        start_response("200 OK", [("Content-Type", found[1]), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]

    return coverage_app


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
