"""User-space instructions per request, counted by callgrind: a noise-free figure for the hot path.

Wall-clock benchmarks on a shared 2-core machine wobble by 20% or more; instruction counts do
not. This runs one worker (1 thread, or --threads N / 0 for green) under ``valgrind --tool=callgrind`` twice,
once with a warm-up only and once with N more keep-alive requests, and prints the difference
divided by N, plus the top functions. Kernel time (recv/writev on loopback) is not counted.

    python bench/instructions.py [--requests 2000] [--top 25] [--threads N] [--post BYTES] [--big] [--browser] [--form]
                                 [--app closeiter|flask|django] [--inclusive] [--gc-freeze]
                                 [--conns 10] [--cache-sim [--sort D1mr]] [--server PEER]

``--server PEER`` counts a peer of bench/peers.py instead (freastal, bjoern, fastwsgi, fastpysgi,
...): the same app of bench/apps.py, the same requests from the same driver, started as
bench/run.py starts it, so that user-space work per request compares across servers without
the wall clock's noise. What the kernel does for each server's request is bench/kernel_counts.py's.

``--post BYTES`` sends POST requests with a body of that size to an echo app (the benchmark's
16 KiB POST is ``--post 16384``) instead of GET to hello world; ``--big`` GETs a 64 KiB response;
``--browser`` sends browser-like heads that never repeat (the benchmark's ``browser`` scenario).
``--form`` POSTs browser-like heads with a 2 KiB urlencoded body (the benchmark's ``form``
scenario) to bench/apps.py's form app. ``--app`` serves one of the framework scenarios' apps (bench/apps.py: ``closeiter``, the real
Flask and Django views) to browser-like heads; ``--inclusive`` ranks functions by inclusive cost
(callgrind_annotate --inclusive=yes), which splits the app's share from the server's.
``--conns`` sets how many keep-alive connections the driver keeps busy at once (10; wrk's runs use
50-100), which sets how many requests one poll brings. ``--cache-sim`` has callgrind simulate the
caches and branch predictors too (``--cache-sim=yes --branch-sim=yes``, the host's L1 and
last-level geometry) and reports per request, next to the instructions, L1 data read and write
misses (D1mr, D1mw), last-level data misses (DLmr, DLmw) and mispredicted conditional and
indirect branches (Bcm, Bim): what instruction counts do not show (``--sort`` ranks the functions
by one of them). Its run takes about twice as long.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = r'''
import signal, socket, sys
sys.path.insert(0, {root!r})
from spawning.config import Settings
from spawning.server import Server

def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "14")])
    return [b"Hello, world!\n"]

def echo(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]

def big(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", "65536")])
    return [BIG]

BIG = b"x" * 65536
app = echo if {post} else big if {big} else hello
if {app!r}:
    if {threads} == 0:      # as the worker does: patched before the app is loaded
        from spawning import monkey
        monkey.patch_all()
    sys.path.insert(0, {bench!r})
    import apps
    app = getattr(apps, {app!r})

if {gc_freeze}:     # as the worker's --gc-freeze does, once the app is loaded
    import gc
    gc.collect()
    gc.freeze()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(1024)
srv = Server(app, Settings(threads={threads}, processes=1, access_log_file="/dev/null"), [s])
signal.signal(signal.SIGTERM, lambda *a: srv.stop())
with open({portfile!r}, "w") as f:
    f.write(str(s.getsockname()[1]))
srv.serve()
'''


def browser_request(i: int) -> bytes:
    """A browser-like head (bench/browser.lua's fields, ~750 bytes) that no other request
    repeats: the path, query, session cookie, Referer and request id change with i."""
    user = i % 1000
    return (f"GET /shop/item/{i % 50000}/reviews?id={i}&q={i * 2654435761 % 2**32:08x}&page={i % 7} "
            "HTTP/1.1\r\nHost: bench.example\r\n"
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36\r\n"
            "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
            "*/*;q=0.8\r\nAccept-Language: en-GB,en;q=0.9,de;q=0.7\r\n"
            "Accept-Encoding: gzip, deflate, br, zstd\r\n"
            f"Referer: http://bench.example/shop/item/{i * 7 % 50000}/\r\n"
            f"Cookie: sessionid={user * 40503:016x}{user * 9973:016x}; csrftoken={user * 31337:032x}; "
            f"theme=dark; _ga=GA1.1.{user * 7919}.{1700000000 + user}\r\n"
            "Sec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\n"
            "Sec-Fetch-User: ?1\r\nUpgrade-Insecure-Requests: 1\r\n"
            f"X-Request-Id: {i * 2246822519 % 2**32:08x}-{i:012x}\r\n\r\n").encode()


def form_request(i: int) -> bytes:
    """browser_request's head as a form POST (bench/browser.lua with FORM = true): a 2 KiB
    urlencoded body with the user's CSRF token first, which the head's request id and the
    body's title keep from repeating."""
    user = i % 1000
    body = f"csrfmiddlewaretoken={user * 31337:032x}&title=Review+{i}&rating={i % 5}&text=".encode()
    body += b"x" * (2048 - len(body))
    head = browser_request(i).replace(b"GET ", b"POST ", 1)
    head = re.sub(rb"\?[^ ]*", b"", head, count=1)     # wrk's form POST has no query
    return head[:-2] + (b"Content-Type: application/x-www-form-urlencoded\r\n"
                        b"Origin: http://bench.example\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


_counter = [0]


def drive(port: int, n: int, post: int = 0, conns: int = 10, browser: bool = False,
          form: bool = False) -> None:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    if post:
        req = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n"
               b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % post
               + b"a" * post)
    else:
        req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n\r\n"
    done = 0
    while done < n:
        for s in socks:
            if browser or form:
                _counter[0] += 1
                req = (form_request if form else browser_request)(_counter[0])
            s.sendall(req)
        for s in socks:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, _, body = buf.partition(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            while len(body) < length:
                body += s.recv(65536)
        done += conns
    for s in socks:
        s.close()


APPS = {"closeiter": "closeiter", "flask": "flask_view", "django": "django_view", "form": "form"}


def peer_argv(server: str, post: int, big: bool, app: str, workdir: str) -> tuple[list, int, dict]:
    """The argv that starts the peer named server (bench/peers.py) on the app the options name,
    its port and its environment."""
    import peers as P
    peer = next((p for p in P.PEERS if p.name == server), None)
    if peer is None or server.startswith("spawning") or not P.is_installed(peer):
        raise SystemExit(f"--server {server}: not an installed peer of bench/peers.py")
    name = APPS.get(app) or ("echo" if post else "big" if big else "hello")
    with socket.socket() as s:      # a free port, as bench/run.py picks one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = peer.command(name, port, workdir)
    if argv is None:
        raise SystemExit(f"--server {server} cannot serve {name}")
    return argv, port, P.peer_env()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def run(n: int, workdir: str, threads: int = 1, post: int = 0, big: bool = False,
        browser: bool = False, app: str = "", inclusive: bool = False, gc_freeze: bool = False,
        conns: int = 10, cache_sim: bool = False, server: str = "spawning") -> str:
    portfile = os.path.join(workdir, f"port-{n}")
    if server == "spawning":
        script = os.path.join(workdir, "server.py")
        with open(script, "w") as f:
            f.write(SERVER.format(root=ROOT, portfile=portfile, threads=threads, post=post, big=big,
                                    bench=os.path.join(ROOT, "bench"), app=APPS.get(app, ""),
                                    gc_freeze=gc_freeze))
        argv, port, env = [sys.executable, script], 0, None
    else:
        argv, port, env = peer_argv(server, post, big, app, workdir)
    out = os.path.join(workdir, f"cg-{n}.out")
    sim = ["--cache-sim=yes", "--branch-sim=yes"] if cache_sim else []
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", *sim, f"--callgrind-out-file={out}",
                             *argv], cwd=os.path.join(ROOT, "bench"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (_accepts(port) if port else _read(portfile)):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server under valgrind did not start")
            time.sleep(0.2)
        time.sleep(0.5)
        port = port or int(_read(portfile))
        form = app == "form"
        drive(port, 300, post, conns, browser, form)   # warm-up: imports, caches, buffer pools
        if n:
            drive(port, n, post, conns, browser, form)
    finally:
        # spawning stops on SIGTERM; the peers' serve loops take SIGINT (KeyboardInterrupt), and
        # get SIGTERM if that does not end them. Either way callgrind writes its file on exit.
        proc.send_signal(signal.SIGTERM if server == "spawning" else signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    if os.environ.get("INSTRUCTIONS_KEEP"):   # a directory: keep callgrind's files to annotate again
        shutil.copy(out, os.path.join(os.environ["INSTRUCTIONS_KEEP"], os.path.basename(out)))
    argv = ["callgrind_annotate"] + (["--inclusive=yes"] if inclusive else []) + [out]
    if cache_sim:
        argv[1:1] = ["--auto=no", "--show=" + ",".join(EVENTS)]  # functions only, no source lines
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def _read(path: str) -> str:
    """The file's text, or "" while it does not exist yet."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def parse(report: str) -> tuple[int, dict[str, int]]:
    total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", report).group(1).replace(",", ""))
    funcs: dict[str, int] = {}
    for line in report.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)$", line)
        if m and "PROGRAM TOTALS" not in line and not m.group(2).startswith("=>"):
            funcs[m.group(2)] = int(m.group(1).replace(",", ""))
    return total, funcs


EVENTS = ("Ir", "D1mr", "D1mw", "DLmr", "DLmw", "Bcm", "Bim")     # what --cache-sim reports, in order
# One event's column in callgrind_annotate's table: a count with its share, or "." for none.
_COLUMN = r"(?:([\d,]+)(?: \(\s*[\d.]+%\))?|\.)\s+"


def parse_events(report: str) -> tuple[list[int], dict[str, list[int]]]:
    """parse() for a report with every event of EVENTS shown: the totals and each function's
    counts, one per event."""
    row = re.compile(r"\s*" + _COLUMN * len(EVENTS) + r"(\S.*)$")
    totals: list[int] = []
    funcs: dict[str, list[int]] = {}
    for line in report.splitlines():
        m = row.match(line)
        if not m or not re.match(r"\s*[\d,]", line):
            continue
        counts = [int((c or "0").replace(",", "")) for c in m.groups()[:-1]]
        name = m.group(len(EVENTS) + 1)
        if name.startswith("PROGRAM TOTALS"):
            totals = counts
        elif not name.startswith("=>"):
            funcs[name] = counts
    return totals, funcs


def main_cache_sim(a: argparse.Namespace, browser: bool) -> None:
    """main() for --cache-sim: per request, each event's total and the top functions."""
    opts = (a.threads, a.post, a.big, browser, a.app, a.inclusive, a.gc_freeze, a.conns, True,
            a.server)
    with tempfile.TemporaryDirectory() as d:
        t0, f0 = parse_events(run(0, d, *opts))
        t1, f1 = parse_events(run(a.requests, d, *opts))
    per = [(y - x) / a.requests for x, y in zip(t0, t1)]
    print("per request: " + ", ".join(f"{e} {v:,.{0 if e == 'Ir' else 2}f}" for e, v in zip(EVENTS, per)))
    zero = [0] * len(EVENTS)
    diff = {k: [(y - x) / a.requests for x, y in zip(f0.get(k, zero), v)] for k, v in f1.items()}
    col = EVENTS.index(a.sort)
    print("".join(f"{e:>10}" for e in EVENTS))
    for name, v in sorted(diff.items(), key=lambda kv: -kv[1][col])[: a.top]:
        print(f"{v[0]:10,.0f}" + "".join(f"{x:10.2f}" for x in v[1:]) + f"  {name[-100:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1, help="worker threads; 0 = green threads")
    ap.add_argument("--post", type=int, default=0, metavar="BYTES",
                    help="POST bodies of this size to an echo app instead of GET hello world")
    ap.add_argument("--big", action="store_true", help="GET a 64 KiB response instead of hello world")
    ap.add_argument("--browser", action="store_true",
                    help="browser-like heads that never repeat (bench/browser.lua's) to hello world")
    ap.add_argument("--form", action="store_true",
                    help="browser-like 2 KiB urlencoded form POSTs (FORM = true) to bench/apps.py's form app")
    ap.add_argument("--app", choices=sorted(APPS), default="",
                    help="a framework scenario's app (bench/apps.py), to browser-like heads")
    ap.add_argument("--inclusive", action="store_true",
                    help="rank functions by inclusive cost (what they and their callees spend)")
    ap.add_argument("--gc-freeze", action="store_true", help="gc.freeze() before serving, as --gc-freeze")
    ap.add_argument("--conns", type=int, default=10, help="keep-alive connections the driver keeps busy")
    ap.add_argument("--cache-sim", action="store_true",
                    help="simulate caches and branch predictors: data misses, mispredicts per request")
    ap.add_argument("--sort", choices=EVENTS, default="Ir", help="with --cache-sim: rank functions by it")
    ap.add_argument("--server", default="spawning",
                    help="a peer of bench/peers.py (bjoern, fastwsgi, fastpysgi, freastal, ...) to "
                         "count instead of spawning, serving the same app the same requests")
    a = ap.parse_args()
    if a.form:
        a.app = "form"
    browser = a.browser or bool(a.app) and a.app != "form"
    if a.cache_sim:
        main_cache_sim(a, browser)
        return
    opts = (a.threads, a.post, a.big, browser, a.app, a.inclusive, a.gc_freeze, a.conns, False,
            a.server)
    with tempfile.TemporaryDirectory() as d:
        t0, f0 = parse(run(0, d, *opts))
        t1, f1 = parse(run(a.requests, d, *opts))
    print(f"user-space instructions per request: {(t1 - t0) / a.requests:,.0f}")
    diff = {k: (v - f0.get(k, 0)) / a.requests for k, v in f1.items()}
    for name, v in sorted(diff.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"{v:9,.0f}  {name[-100:]}")


if __name__ == "__main__":
    main()
