"""How to install and start each server on a given port, with one process.

Every ``command`` is run from bench/ with PYTHONPATH=<repo>:<repo>/bench, so ``apps`` is importable
and spawning is the in-tree build. The runner prefixes each command with ``taskset -c 0``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

PY = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# scenario name -> app callable name in bench/apps.py
APP_FOR = {"hello": "hello", "hello-close": "hello", "64k": "big", "post16k": "echo",
           "sleep100ms": "sleep", "browser": "hello", "form": "form", "closeiter": "closeiter",
           "django": "django_view", "flask": "flask_view"}


# Issue 10's realistic traffic (bench/browser.lua): every server that runs the main scenarios
# runs these too.
REALISTIC = {"browser", "form", "closeiter", "django", "flask"}
MAIN_SCENARIOS_BASE = {"hello", "hello-close", "64k", "post16k"}
MAIN_SCENARIOS = MAIN_SCENARIOS_BASE | REALISTIC   # what a peer runs unless it says otherwise


@dataclass
class Peer:
    name: str
    # (app_name, port, tmpdir) -> argv, or None when this peer cannot run that app
    command: Callable[[str, int, str], Optional[list]]
    pip: list = field(default_factory=list)        # pip install arguments
    apt: list = field(default_factory=list)        # Debian packages needed first
    module: Optional[str] = None                   # import to check it is installed
    binary: Optional[str] = None                   # or an executable on PATH
    dist: Optional[str] = None                     # distribution name for the version
    note: str = ""
    scenarios: Optional[set] = None                # None: the four main ones


def _py(code: str) -> list:
    return [PY, "-c", code]


def spawning_cli_works() -> bool:
    try:
        r = subprocess.run([PY, "-m", "spawning", "--version"], cwd=HERE, env=peer_env(),
                           capture_output=True, timeout=20)
        return r.returncode == 0
    except Exception:
        return False


_CLI: Optional[bool] = None


def _spawning(threads: int):
    def cmd(app, port, tmp):
        global _CLI
        if _CLI is None:
            _CLI = spawning_cli_works()
        if _CLI:
            return [PY, "-m", "spawning", "--processes", "1", "--threads", str(threads),
                    "-i", "127.0.0.1", "-p", str(port), "--backlog", "4096",
                    "-l", "/dev/null", f"apps.{app}"]
        return [PY, os.path.join(HERE, "serve_spawning.py"), str(port), str(threads),
                f"apps:{app}"]
    return cmd


def _gunicorn(worker: str):
    def cmd(app, port, tmp):
        argv = [PY, "-m", "gunicorn", "-w", "1", "-k", worker, "-b", f"127.0.0.1:{port}",
                "--backlog", "4096", "--log-level", "warning"]
        if worker == "gevent":
            argv += ["--worker-connections", "10000"]
        return argv + [f"apps:{app}"]
    return cmd


def _bjoern(app, port, tmp):
    return _py(f"import bjoern, apps; bjoern.run(apps.{app}, '127.0.0.1', {port})")


def _waitress(app, port, tmp):
    return [PY, "-m", "waitress", "--listen", f"127.0.0.1:{port}", "--threads", "4",
            "--backlog", "4096", "--connection-limit", "2000", f"apps:{app}"]


def _granian(app, port, tmp):
    return [PY, "-m", "granian", "--interface", "wsgi", "--workers", "1", "--host", "127.0.0.1",
            "--port", str(port), "--backlog", "4096", "--no-access-log", "--log-level", "warning",
            f"apps:{app}"]


def _fastwsgi(app, port, tmp):
    return _py(f"import fastwsgi, apps; fastwsgi.run(apps.{app}, host='127.0.0.1', port={port})")


def _fastpysgi(app, port, tmp):
    return _py(f"import fastpysgi, apps; fastpysgi.run(apps.{app}, host='127.0.0.1', port={port}, "
               "workers=1, loglevel=0)")


def _freastal(app, port, tmp):
    return _py(f"import freastal, apps; freastal.serve(apps.{app}, host='127.0.0.1', "
               f"port={port}, workers=1)")


def _meinheld(app, port, tmp):
    return _py("from meinheld import server; import apps; "
               "server.set_backlog(4096); server.set_keepalive(10); "
               "server.set_access_logger(None); "
               f"server.listen(('127.0.0.1', {port})); server.run(apps.{app})")


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
{body}
        }}
    }}
}}
"""


def _nginx(app, port, tmp):
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if app == "hello":
        body = '            default_type text/plain;\n            return 200 "Hello, world!\\n";'
    elif app == "big":
        www = os.path.join(tmp, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "big"), "wb") as f:
            f.write(b"x" * 65536)
        body = (f"            root {www};\n            default_type application/octet-stream;\n"
                "            try_files /big =404;")
    else:
        return None  # nginx cannot echo a body by itself
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, port=port, body=body))
    return [exe, "-p", tmp, "-e", os.path.join(tmp, "nginx-error.log"), "-c", conf]


PEERS = [
    Peer("spawning", _spawning(4), module="spawning", note="--processes 1 --threads 4"),
    Peer("spawning-green", _spawning(0), module="spawning", note="--processes 1 --threads 0",
         scenarios={"hello", "hello-close", "64k", "post16k", "sleep100ms"} | REALISTIC),
    Peer("gunicorn", _gunicorn("sync"), pip=["gunicorn"], module="gunicorn", dist="gunicorn",
         note="sync worker, -w 1"),
    Peer("gunicorn-gevent", _gunicorn("gevent"), pip=["gunicorn", "gevent"], module="gevent",
         dist="gevent", note="gevent worker, -w 1", scenarios={"sleep100ms"}),
    Peer("bjoern", _bjoern, pip=["bjoern"], apt=["libev-dev"], module="bjoern", dist="bjoern"),
    Peer("waitress", _waitress, pip=["waitress"], module="waitress", dist="waitress",
         note="--threads 4"),
    Peer("granian", _granian, pip=["granian"], module="granian", dist="granian",
         note="--interface wsgi --workers 1"),
    Peer("fastwsgi", _fastwsgi, pip=["fastwsgi"], module="fastwsgi", dist="fastwsgi"),
    Peer("fastpysgi", _fastpysgi, pip=["fastpysgi"], module="fastpysgi", dist="fastpysgi"),
    Peer("freastal", _freastal, pip=["freastal"], module="freastal", dist="freastal",
         note="workers=1"),
    # meinheld 1.0.2 pins greenlet<0.5, which does not build on current Pythons; its own C
    # extension builds and runs without it (greenlet is only used for its optional continuations).
    Peer("meinheld", _meinheld, pip=["--no-deps", "meinheld"], module="meinheld", dist="meinheld"),
    Peer("nginx", _nginx, apt=["nginx"], binary="nginx",
         note="static string / static file, 1 worker (reference)",
         scenarios={"hello", "hello-close", "64k"}),
]

# BENCH_BASELINE=DIR adds spawning as built in another checkout (e.g. a worktree of an earlier
# commit, its core compiled in place), in both modes, to measure a change before and after in
# the same run. BENCH_EXTRA=NAME:DIR:THREADS[,...] adds more such builds, one mode each (variants
# of a change, or another --threads), under the names given.
def _spawning_at(checkout: str, threads: int):
    def cmd(app, port, tmp):
        return ["env", f"PYTHONPATH={checkout}{os.pathsep}{HERE}", PY, "-m", "spawning",
                "--processes", "1", "--threads", str(threads), "-i", "127.0.0.1", "-p", str(port),
                "--backlog", "4096", "-l", "/dev/null", f"apps.{app}"]
    return cmd


_BASELINE = os.environ.get("BENCH_BASELINE")
_OTHER_BUILDS = [("baseline", _BASELINE, 4), ("baseline-green", _BASELINE, 0)] if _BASELINE else []
for _spec in filter(None, os.environ.get("BENCH_EXTRA", "").split(",")):
    _name, _dir, _threads = _spec.rsplit(":", 2)
    _OTHER_BUILDS.append((_name, _dir, int(_threads)))
PEERS += [Peer(name, _spawning_at(d, t), module="spawning", note=f"{d}, -t {t}",
               scenarios=MAIN_SCENARIOS_BASE | REALISTIC) for name, d, t in _OTHER_BUILDS]

# The peers the performance goal compares against.
REFERENCE = ("bjoern", "fastwsgi", "fastpysgi", "freastal")


def peer_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def is_installed(peer: Peer) -> bool:
    if peer.binary:
        return bool(shutil.which(peer.binary) or os.path.exists(f"/usr/sbin/{peer.binary}"))
    r = subprocess.run([PY, "-c", f"import {peer.module}"], cwd=HERE, env=peer_env(),
                       capture_output=True, timeout=60)
    return r.returncode == 0


def install_error(peer: Peer) -> str:
    r = subprocess.run([PY, "-c", f"import {peer.module}"], cwd=HERE, env=peer_env(),
                       capture_output=True, text=True, timeout=60)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "not installed"


def version(peer: Peer) -> str:
    if peer.name.startswith("spawning"):
        try:
            r = subprocess.run([PY, "-c", "import spawning; print(spawning.__version__)"],
                               cwd=HERE, env=peer_env(), capture_output=True, text=True, timeout=20)
            return r.stdout.strip() or "?"
        except Exception:
            return "?"
    if peer.binary:
        try:
            r = subprocess.run([shutil.which(peer.binary) or f"/usr/sbin/{peer.binary}", "-v"],
                               capture_output=True, text=True, timeout=10)
            return (r.stderr + r.stdout).strip().split("/")[-1]
        except Exception:
            return "?"
    try:
        from importlib.metadata import version as v
        return v(peer.dist or peer.module)
    except Exception:
        return "?"
