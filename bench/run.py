#!/usr/bin/env python
"""Side-by-side benchmark of spawning and its peers with wrk, each server one process.

    python bench/run.py --install            # install missing peers, run everything, write README
    python bench/run.py --only spawning,bjoern --scenario hello --interleave 4

Each server runs pinned to CPU 0 (``taskset -c 0``) in its own process group; wrk runs pinned to
CPU 1 (``taskset -c 1 wrk -t1 -cN --latency``). The server's CPU time is the sum of utime+stime
(and reaped children's) over every process in its group, read from /proc/PID/stat before and after
the measured run, so the report gives requests/s, p99 latency and requests per server CPU-second.
All traffic goes to 127.0.0.1; every run is bounded in time; only the process groups this script
created are signalled.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers as P  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
POST_SIZE = 16384

with open(os.path.join(HERE, "browser.lua")) as _f:
    BROWSER_LUA = _f.read()

# name -> (title, connections, lua snippet (before done()), check)
SCENARIOS = {
    "hello": ("hello world, keep-alive", 100, ""),
    "hello-close": ("hello world, Connection: close", 100,
                    'wrk.headers["Connection"] = "close"\n'),
    "64k": ("64 KiB response, keep-alive", 100, ""),
    "post16k": ("16 KiB POST echo, keep-alive", 100,
                'wrk.method = "POST"\n'
                f'wrk.body = string.rep("a", {POST_SIZE})\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n'),
    "sleep100ms": ("100 ms cooperative sleep, 1,000 keep-alive connections (issue 4)", 1000, ""),
    # Realistic traffic (issue 10): browser-like heads that never repeat (bench/browser.lua).
    "browser": ("browser-like GETs, heads never repeat, keep-alive", 50, BROWSER_LUA),
    "form": ("browser-like 2 KiB form POSTs, keep-alive", 50, "FORM = true\n" + BROWSER_LUA),
    "closeiter": ("browser-like GETs, app returns an iterable with close() and 6 headers", 50,
                  BROWSER_LUA),
    "django": ("browser-like GETs to a real Django view (DEBUG off)", 50, BROWSER_LUA),
    "flask": ("browser-like GETs to a real Flask view", 50, BROWSER_LUA),
}

LUA_DONE = r'''
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, \"connect\": %d, " ..
    "\"read\": %d, \"write\": %d, \"status\": %d, \"timeout\": %d, \"p50\": %d, \"p90\": %d, " ..
    "\"p99\": %d, \"p999\": %d, \"max\": %d, \"mean\": %f}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
'''


# --------------------------------------------------------------------------- processes

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def group_cpu_ticks(pgid: int) -> int:
    """utime+stime+cutime+cstime summed over every live process in process group pgid."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data.rsplit(")", 1)[1].split()
        if int(fields[2]) != pgid:          # field 5: pgrp
            continue
        total += sum(int(x) for x in fields[11:15])  # fields 14-17
    return total


def system_busy_ticks() -> int:
    """Busy jiffies of all CPUs (everything but idle and iowait) from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return sum(vals[:8]) - vals[3] - vals[4]


def children_ticks() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * CLK_TCK


def wait_quiet(max_wait: float, pgid: int, threshold: float = 0.25) -> float:
    """Waits (at most max_wait s) until other processes use < threshold of a core; returns
    the load (in cores) last seen."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, g0, t0 = system_busy_ticks(), group_cpu_ticks(pgid), time.monotonic()
        time.sleep(0.5)
        busy = (system_busy_ticks() - b0) - (group_cpu_ticks(pgid) - g0)
        load = busy / CLK_TCK / (time.monotonic() - t0)
        if load < threshold or time.monotonic() >= deadline:
            return load
        time.sleep(1.0)


def group_pids(pgid: int) -> list:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[2]) == pgid:
                        out.append(int(name))
            except OSError:
                pass
    return out


class ServerProcess:
    def __init__(self, argv, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(["taskset", "-c", "0"] + argv, cwd=HERE, env=P.peer_env(),
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pgid = self.proc.pid   # session leader: pgid == pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the process group we created, then SIGKILL whatever is left of it."""
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if not group_pids(self.pgid) and not self.alive():
                break
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.proc.poll()
                if not self.alive() and not group_pids(self.pgid):
                    break
                time.sleep(0.05)
        self.proc.poll()
        self.log.close()

    def log_tail(self, n=15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def wait_listening(srv: ServerProcess, port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not srv.alive():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def check_response(port: int, scenario: str) -> str:
    """One real request with http.client; returns '' when the answer is right."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Connection": "close"} if scenario == "hello-close" else {}
        if scenario in BROWSER_SCENARIOS:
            return check_browser(conn, scenario)
        if scenario == "post16k":
            body = bytes(range(256)) * (POST_SIZE // 256)
            conn.request("POST", "/", body=body,
                         headers={**headers, "Content-Type": "application/octet-stream"})
            expect = body
        else:
            conn.request("GET", "/", headers=headers)
            expect = b"x" * 65536 if scenario == "64k" else b"Hello, world!\n"
        r = conn.getresponse()
        data = r.read()
        conn.close()
        if r.status != 200:
            return f"status {r.status}"
        if data != expect:
            return f"wrong body ({len(data)} bytes, expected {len(expect)})"
        return ""
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"


BROWSER_SCENARIOS = {"browser", "form", "closeiter", "django", "flask"}
BROWSER_HEAD = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)", "Accept": "text/html",
                "Cookie": "sessionid=abc; csrftoken=" + "0" * 32, "Referer": "http://bench.example/"}


def check_browser(conn, scenario: str) -> str:
    """The realistic scenarios' check: their app answers 200 with the page it should."""
    if scenario == "form":
        body = ("csrfmiddlewaretoken=" + "0" * 32 + "&text=" + "x" * 1990).encode()
        conn.request("POST", "/shop/item/1/reviews", body=body,
                     headers={**BROWSER_HEAD, "Content-Type": "application/x-www-form-urlencoded"})
    else:
        conn.request("GET", "/shop/item/7/reviews?id=7&q=abc&page=1", headers=BROWSER_HEAD)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    if r.status != 200:
        return f"status {r.status}"
    want = b"Item 7 of abc." if scenario in ("django", "flask") else b"Hello, world!\n"
    if want not in data:
        return f"wrong body {data[:80]!r}"
    return ""


def calls_close(port: int) -> bool:
    """Whether the server called close() on the check request's iterable (PEP 3333 says it
    must; some servers skip it, which saves them the call and the framework's cleanup)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/__closed")
    n = conn.getresponse().read()
    conn.close()
    return n.strip() not in (b"", b"0")


def run_wrk(port: int, script: str, connections: int, duration: float, timeout_s: str = "5s"):
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(duration)))}s",
            f"--timeout={timeout_s}", "--latency", "-s", script, f"http://127.0.0.1:{port}/"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    for line in r.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):]), r.stdout
    raise RuntimeError(f"wrk failed (rc {r.returncode}): "
                       f"{(r.stderr + r.stdout).strip()[-300:]}")


# --------------------------------------------------------------------------- one measurement

class Started:
    """One server up for a scenario: checked, warmed up, ready for measured runs."""

    def __init__(self, peer, scenario: str, args, tmp: str) -> None:
        self.peer = peer
        self.scenario = scenario
        self.srv = None
        self.skip = ""
        self.base = {"server": peer.name, "scenario": scenario}
        self.port = free_port()
        work = tempfile.mkdtemp(prefix=f"{peer.name}-{scenario}-", dir=tmp)
        argv = peer.command(P.APP_FOR[scenario], self.port, work)
        if argv is None:
            self.skip = "n/a"
            return
        _, self.connections, lua = SCENARIOS[scenario]
        self.script = os.path.join(work, "wrk.lua")
        with open(self.script, "w") as f:
            f.write(lua + LUA_DONE)
        self.base["argv"] = " ".join(argv)
        self.srv = ServerProcess(argv, os.path.join(work, "server.log"))
        if not wait_listening(self.srv, self.port):
            self.skip = "did not start: " + (self.srv.log_tail(3).replace("\n", " | ")[-300:]
                                             or f"exit {self.srv.proc.returncode}")
            return
        err = check_response(self.port, scenario)
        if err:
            self.skip = "wrong answer to a check request: " + err
            return
        if scenario == "closeiter":
            self.base["calls_close"] = calls_close(self.port)
        if args.warmup > 0:
            run_wrk(self.port, self.script, self.connections, args.warmup)
        if not self.srv.alive():
            self.skip = "died during warm-up: " + self.srv.log_tail(3).replace("\n", " | ")[-300:]

    def measure(self, args, quiet_wait: float) -> dict:
        """One measured wrk run."""
        res = dict(self.base)
        if self.skip:
            res["skip"] = self.skip
            return res
        srv, port = self.srv, self.port
        try:
            if not srv.alive():
                res["skip"] = "exited: " + srv.log_tail(3).replace("\n", " | ")[-300:]
                return res
            res["load_before"] = wait_quiet(quiet_wait, srv.pgid) if quiet_wait > 0 else 0.0
            w0, s0 = children_ticks(), system_busy_ticks()
            t0, c0 = time.monotonic(), group_cpu_ticks(srv.pgid)
            # The 1,000-connection sleep scenario needs a few seconds to say anything of its
            # 100 ms cycles, also when the rounds are short (--interleave).
            duration = max(args.duration, 5.0) if self.scenario == "sleep100ms" else args.duration
            stats, text = run_wrk(port, self.script, self.connections, duration)
            c1, t1 = group_cpu_ticks(srv.pgid), time.monotonic()
            w1, s1 = children_ticks(), system_busy_ticks()
            # CPU used by everything else on the machine meanwhile (other users' jobs, steal,
            # and with --interleave the other servers' idle loops)
            res["other_cpu"] = max(0.0, ((s1 - s0) - (c1 - c0) - (w1 - w0)) / CLK_TCK / (t1 - t0))
            res["alive_after"] = srv.alive()
            res["procs"] = len(group_pids(srv.pgid))
            wall = stats["duration_us"] / 1e6
            cpu = (c1 - c0) / CLK_TCK
            res.update(stats)
            res["rps"] = stats["requests"] / wall if wall else 0.0
            res["cpu_s"] = cpu
            res["cpu_share"] = cpu / (t1 - t0) if t1 > t0 else 0.0
            res["rps_per_cpu"] = stats["requests"] / cpu if cpu > 0 else 0.0
            res["errors"] = sum(stats[k] for k in ("connect", "read", "write", "status", "timeout"))
            res["post_check"] = check_response(port, self.scenario) if srv.alive() else "server died"
            res["wrk_text"] = text
        except Exception as e:  # noqa: BLE001
            res["skip"] = f"{type(e).__name__}: {e}"
        return res

    def stop(self, res: dict | None = None) -> None:
        if self.srv is None:
            return
        self.srv.stop()
        tail = self.srv.log_tail(20)
        if res is not None and tail.strip():
            res["log_tail"] = tail


def measure(peer, scenario: str, args, tmp: str) -> dict:
    """Starts the server, measures one run, stops it."""
    st = None
    res = {"server": peer.name, "scenario": scenario}
    try:
        st = Started(peer, scenario, args, tmp)
        res = st.measure(args, args.quiet_wait)
    except Exception as e:  # noqa: BLE001
        res["skip"] = f"{type(e).__name__}: {e}"
    finally:
        if st is not None:
            st.stop(res)
    return res


# --------------------------------------------------------------------------- install

def install(selected) -> dict:
    """Installs missing peers. Returns {peer name: reason} for those still missing."""
    failed = {}
    apt_updated = False
    for peer in selected:
        if P.is_installed(peer):
            continue
        if peer.apt and shutil.which("apt-get"):
            if not apt_updated:
                subprocess.run(["apt-get", "update", "-qq"], timeout=300)
                apt_updated = True
            r = subprocess.run(["apt-get", "install", "-y", "-qq"] + peer.apt, timeout=600,
                               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"apt-get install {' '.join(peer.apt)} failed: {r.stderr[-300:]}")
        if peer.pip:
            print(f"pip install {' '.join(peer.pip)}", flush=True)
            r = subprocess.run([sys.executable, "-m", "pip", "install", "-q"] + peer.pip,
                               capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                lines = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
                failed[peer.name] = "pip install failed: " + (lines[-1] if lines else
                                                               r.stderr.strip()[-200:])
        if not P.is_installed(peer) and peer.name not in failed:
            failed[peer.name] = "not importable after install: " + P.install_error(peer)
    return failed


# --------------------------------------------------------------------------- report

def machine_info() -> str:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return (f"{model}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, {wrk_v.split(' Copyright')[0]}")


def schedule(scns, selected, rounds):
    """(scenario, round, peer) in run order: each scenario's rounds back to back, every server
    once per round, the order reversed every other round so that a drift of the machine's speed
    during a scenario favours no one."""
    for scn in scns:
        for rnd in range(rounds):
            for peer in (selected if rnd % 2 == 0 else selected[::-1]):
                yield scn, rnd, peer


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


MEDIAN_FIELDS = ("rps", "rps_per_cpu", "cpu_share", "other_cpu", "p50", "p99", "max")
SUM_FIELDS = ("errors", "connect", "read", "write", "status", "timeout")


def merge_rounds(rows):
    """One row per server from several rounds of a scenario: medians of the figures, sums of the
    error counts, and each round's req/CPU-s ratios (the row's ratio is their median, which a
    slow minute of the machine moves less than a ratio of medians):

    - ``ratios``: against the best reference server, the one with the highest median req/CPU-s
      (``best_ref``), in the same round;
    - ``ratios_max``: against whichever reference server measured highest in that round. This
      one is biased low: the maximum of three noisy figures overstates the best server (by
      several per cent when two of them are close), so it is shown as the conservative bound."""
    rounds = sorted({r.get("round", 0) for r in rows})
    refs = [r for r in rows if "skip" not in r and r["server"] in P.REFERENCE]
    best_ref = max({r["server"] for r in refs}, default=None,
                   key=lambda n: median([r["rps_per_cpu"] for r in refs if r["server"] == n]))
    best, best_max = {}, {}
    for rnd in rounds:
        here = [r for r in refs if r.get("round", 0) == rnd]
        if here:
            best_max[rnd] = max(r["rps_per_cpu"] for r in here)
        mine = [r["rps_per_cpu"] for r in here if r["server"] == best_ref]
        if mine:
            best[rnd] = mine[0]
    merged = []
    for name in dict.fromkeys(r["server"] for r in rows):
        mine = [r for r in rows if r["server"] == name]
        ok = [r for r in mine if "skip" not in r]
        if not ok:
            merged.append(mine[-1])
            continue
        m = dict(ok[-1])
        for k in MEDIAN_FIELDS:
            m[k] = median([r[k] for r in ok])
        for k in SUM_FIELDS:
            m[k] = sum(r[k] for r in ok)
        m["post_check"] = next((r["post_check"] for r in ok if r.get("post_check")), "")
        m["alive_after"] = all(r.get("alive_after") for r in ok)
        m["ratios"] = [r["rps_per_cpu"] / best[r.get("round", 0)] for r in ok
                       if best.get(r.get("round", 0))]
        m["ratios_max"] = [r["rps_per_cpu"] / best_max[r.get("round", 0)] for r in ok
                           if best_max.get(r.get("round", 0))]
        m["best_ref"] = best_ref
        merged.append(m)
    return merged


def fmt_ratio(x):
    return f"{x:.2f}x" if x else "-"


FRAMEWORK_SCENARIOS = {"closeiter", "django", "flask"}


def build_report(results, versions, unavailable, args, started, elapsed) -> str:
    out = []
    # Servers that never call close() on the app's iterable (found by the closeiter check):
    # the framework scenarios mark them, since skipping it skips the framework's cleanup.
    skips_close = {r["server"] for r in results if r.get("calls_close") is False}
    by_scn = {}
    for r in results:
        by_scn.setdefault(r["scenario"], []).append(r)
    for scn in SCENARIOS:
        rows = by_scn.get(scn)
        if not rows:
            continue
        title, conns, _ = SCENARIOS[scn]
        multi = args.rounds > 1
        if multi:
            rows = merge_rounds(rows)
        ok = [r for r in rows if "skip" not in r]
        if scn == "sleep100ms":
            out.append(f"### {title}\n")
            out.append("`wrk -t1 -c1000`; ideal = 1,000 connections / 0.1 s = 10,000 req/s; "
                       "goal: >= 90% of ideal, p99 < 150 ms.\n")
            out.append("| server | req/s | % of ideal | p50 ms | p99 ms | max ms | server CPU | "
                       "req/CPU-s | errors | other CPU |")
            out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in rows:
                if "skip" in r:
                    out.append(f"| {r['server']} | {r['skip']} |||||||")
                    continue
                out.append(f"| {r['server']} | {r['rps']:,.0f} | {r['rps'] / 100:.0f}% | "
                           f"{r['p50'] / 1000:.1f} | {r['p99'] / 1000:.1f} | {r['max'] / 1000:.0f} | "
                           f"{r['cpu_share'] * 100:.0f}% | {r['rps_per_cpu']:,.0f} | "
                           f"{r['errors']} | {r['other_cpu'] * 100:.0f}% |")
            out.append("")
            continue
        refs = [r for r in ok if r["server"] in P.REFERENCE]
        best_eff = max(refs, key=lambda r: r["rps_per_cpu"], default=None)
        best_rps = max(refs, key=lambda r: r["rps"], default=None)
        out.append(f"### {title}\n")
        if best_eff and multi:
            how = (f"{args.rounds} rounds of {args.duration:g} s, every server running "
                   "throughout and measured in turn" if args.interleave
                   else f"{args.rounds} interleaved rounds")
            out.append(f"Medians of {how}. req/CPU-s ratio: the median of the per-round ratios "
                       f"against the best of {'/'.join(P.REFERENCE)} (the highest median "
                       f"req/CPU-s: {best_eff.get('best_ref')}) in the same round, each "
                       f"round's ratio listed; \"vs round's best\": the same against whichever "
                       f"of them measured highest in each round (biased low: the maximum of "
                       f"noisy figures overstates the best server). req/s ratio vs "
                       f"{best_rps['server']}'s median.\n")
        elif best_eff:
            out.append(f"Ratios against the best of {'/'.join(P.REFERENCE)} in this run: "
                       f"req/CPU-s vs {best_eff['server']}, req/s vs {best_rps['server']}.\n")
        extra = " vs round's best | per round |" if multi else ""
        out.append("| server | req/s | p99 ms | server CPU | req/CPU-s | req/CPU-s ratio | "
                   "req/s ratio | errors | other CPU |" + extra)
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---|" if multi else ""))
        for r in sorted(rows, key=lambda r: -r.get("rps_per_cpu", -1)):
            if "skip" in r:
                out.append(f"| {r['server']} | {r['skip']} |||||||" + ("||" if multi else ""))
                continue
            if multi:
                e_ratio = median(r["ratios"]) if r.get("ratios") else 0
            else:
                e_ratio = r["rps_per_cpu"] / best_eff["rps_per_cpu"] if best_eff else 0
            r_ratio = r["rps"] / best_rps["rps"] if best_rps else 0
            name = f"**{r['server']}**" if r["server"].startswith("spawning") else r["server"]
            if scn in FRAMEWORK_SCENARIOS and r["server"] in skips_close:
                name += " (skips close())"
            line = (f"| {name} | {r['rps']:,.0f} | {r['p99'] / 1000:.2f} | "
                    f"{r['cpu_share'] * 100:.0f}% | {r['rps_per_cpu']:,.0f} | "
                    f"{fmt_ratio(e_ratio)} | {fmt_ratio(r_ratio)} | {r['errors']} | "
                    f"{r['other_cpu'] * 100:.0f}% |")
            if multi:
                lo = median(r["ratios_max"]) if r.get("ratios_max") else 0
                line += (f" {fmt_ratio(lo)} | "
                         + " ".join(f"{x:.2f}" for x in r.get("ratios", [])) + " |")
            out.append(line)
        out.append("")
    notes = []
    for r in results:
        if "skip" not in r and (r["errors"] or r.get("post_check") or not r.get("alive_after")):
            bits = [f"{k}={r[k]}" for k in ("connect", "read", "write", "status", "timeout")
                    if r[k]]
            if r.get("post_check"):
                bits.append(f"check after run: {r['post_check']}")
            if not r.get("alive_after"):
                bits.append("server exited during the run")
            notes.append(f"- {r['server']} / {r['scenario']}: " + ", ".join(bits))
    if unavailable:
        notes.append("")
        for name, why in unavailable.items():
            notes.append(f"- {name} not run: {why}")
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    head = [f"Measured {started:%Y-%m-%d %H:%M} UTC on: {machine_info()}.",
            f"Versions: {vers}.",
            f"Command: `{' '.join(['python', 'bench/run.py'] + sys.argv[1:])}` "
            f"(wrk -t1, {args.duration:g} s per run after a {args.warmup:g} s warm-up; "
            f"whole run {elapsed / 60:.1f} min).", ""]
    noisy = [r for r in results if "skip" not in r and r["other_cpu"] > 0.15]
    if noisy:
        notes.append(f"- {len(noisy)} of {len(results)} runs shared the machine with other "
                     "work (\"other CPU\" > 15% of a core: processes outside this benchmark, "
                     "or steal time); their req/s and latency are the least trustworthy.")
    if notes:
        notes = ["Errors and notes from this run (wrk socket-error counts, non-2xx, "
                 "servers not run):", ""] + notes + [""]
    return "\n".join(head + out + notes)


README_HEAD = """\
# bench/

Side-by-side benchmark of spawning against other WSGI servers, each with one process, with wrk
on loopback.

```
python setup.py build_ext --inplace     # spawning's core, in place (the bench runs the tree)
python bench/run.py --install            # installs missing peers, runs all, rewrites this table
python bench/run.py --only spawning,bjoern --scenario hello,64k --interleave 4   # a subset
```

- `apps.py`: the WSGI apps (hello world, 64 KiB body, 16 KiB POST echo, 100 ms `time.sleep`,
  a 2 KiB form reader, an iterable with `close()` and six headers as frameworks answer), and
  `frameworks.py`: a real Django project (DEBUG off, the middleware that needs no database, one
  view rendering a small page) and a real Flask view.
- `browser.lua`: realistic traffic (issue 10). Every request carries the 13 fields a current
  browser sends on a same-origin navigation (~750 bytes of head: User-Agent, Accept,
  Accept-Language, Accept-Encoding, Referer, Cookie with a session id, a CSRF token and two more
  cookies, Sec-Fetch-*, Upgrade-Insecure-Requests, X-Request-Id), and on every request the path,
  the query, the session cookie (one of 1,000 users), the Referer and the request id change: no
  two heads are alike, so nothing keyed on a head can help. `FORM = true` makes each a form POST
  with a 2 KiB urlencoded body. The browser, form, closeiter, django and flask scenarios use it.
  The framework tables mark the servers that never call the iterable's `close()` (found by a
  check request): PEP 3333 requires the call, and skipping it skips the framework's cleanup
  (Django's request_finished signal), which is part of what those servers save.
- `overhead.py`: a framework request's CPU time split into the time inside the app (a middleware
  adds up its thread's CPU time in the call, the iteration and close()) and what the server
  costs around it, for every server side by side (`--app django|flask|closeiter`).
- `BENCH_BASELINE=DIR` adds `baseline` and `baseline-green`: spawning from another checkout (a
  worktree of an earlier commit, its core compiled in place), to measure a change before and
  after in one run; `BENCH_EXTRA=NAME:DIR:THREADS[,...]` adds more such builds under the names
  given, one mode each (variants of a change, another `--threads`).
- `peers.py`: how each server is installed and started with one process on a port.
- `run.py`: starts each server pinned to CPU 0 (`taskset -c 0`, its own process group), checks one
  real response, warms up, then runs `taskset -c 1 wrk -t1 -c100 -d2s --latency` (a Lua script
  sets the POST body / `Connection: close` and prints the summary as JSON) and reads the CPU time
  of the server's whole process group from `/proc/PID/stat` before and after. One wrk thread on
  one core saturates before most of these servers do, so **requests per server CPU-second** is
  the figure to compare; requests/s mostly tells how close to wrk's ceiling a server gets.
- "other CPU" is the CPU the rest of the machine used during the run (all busy jiffies in
  `/proc/stat` minus the server's and wrk's), in % of one core. On a shared 2-core machine
  anything above ~15% means the req/s and latency of that row are disturbed; req/CPU-s holds up
  better. Before each run the script waits up to `--quiet-wait` seconds (default 5) for the
  machine to go quiet.
- Options: `--install`, `--duration S`, `--warmup S`, `--only a,b`, `--scenario a,b`,
  `--quiet-wait S`, `--retry-noisy N`, `--rounds N`, `--interleave N`, `--no-readme` (filtered
  runs do not rewrite this file unless `--readme`), `--json FILE`.
- By default (`--interleave 8`) every server of a scenario is started (each pinned to CPU 0,
  idle while the others run) and warmed up once, then measured in turn for 8 rounds of
  `--duration` seconds (default 2): servers compared within a round were measured seconds
  apart, and the machine's speed drifts by 20-40% within minutes. The table gives medians; the
  ratio column is the median of the per-round ratios against the best reference server (the
  one of bjoern/fastwsgi/freastal with the highest median req/CPU-s) in the same round, and the
  last column lists them. "vs round's best" is the same against whichever reference server
  measured highest in each round: a conservative bound, biased low, since the maximum of three
  noisy figures overstates the best server (by several per cent when two are close). The idle
  servers' timers count as "other CPU".
- `--interleave 0` runs one server at a time instead (`--duration` 10 by default); `--rounds N`
  then measures every server N times per scenario, interleaved (A B C, C B A, A B C...), with
  the same medians and ratios.
- `serve_spawning.py`: starts one spawning worker from a script when the CLI does not work.
- `instructions.py`: user-space instructions per request under callgrind (spawning only), a
  figure machine load does not move (`--threads N`; `--post 16384` for the POST echo, `--big`
  for the 64 KiB response; callgrind counts a `rep movsb` copy per byte, so a body copy weighs
  more there than in CPU time); `cpu_split.sh PORT -- CMD...`: user and kernel microseconds per
  request of any one server, from /proc (`WRK_SCRIPT=post16k.lua` for the benchmark's 16 KiB
  POST). Run two servers' cpu_split alternately a few times to compare them: the machine's
  speed drifts by 20-40% within minutes, which single runs cannot cancel out (`--rounds`).
- meinheld is installed with `pip install --no-deps meinheld` (its greenlet<0.5 pin does not
  build on Python 3.11); nginx (Debian package, 1 worker, `master_process off`) returns a static
  string or a static 64 KiB file as a reference line and cannot echo a POST body.
- freastal 0.0.3 resets the connection on any request body of 16,384 bytes or more (16,000
  works; checked with curl), so it has no 16 KiB POST row.
- The 100 ms sleep scenario (issue 4) compares `spawning --threads 0` (monkey-patched
  `time.sleep`) with gunicorn's gevent worker at 1,000 connections.

## Where a request's time goes (2026-12-06)

Browser-like requests, hello-world app: `python bench/instructions.py --browser` counts ~35,000
user-space instructions a request (was ~77,000 before the C runner made every environ: the
Python path built each one, since no head repeats). What is left: building the environ's Python
objects (~20 values decoded to `str`, dict inserts: about half), the core's env block
(`sp_env_pack`, ~6,300: header names upper-cased, repeats joined) and the parser (~4,600);
then the kernel, which is most of the CPU time: every server pays one recv and one send, and
waking the client (`sock_def_readable` under the send) is the largest single kernel item in
`perf` profiles.

A real Django view, `python bench/overhead.py --app django` (per request, 2026-12-06, thread
mode / green mode / peers): spawning 124.9 us of CPU, of which 102.9 inside the app and 22.0
around it (green: 132.6 / 111.3 / 21.3); bjoern 122.8 / 103.2 / 19.6; freastal 118.0 / 91.6 /
26.4; fastwsgi 123.4 / 96.6 / 26.8; fastpysgi 125.3 / 99.2 / 26.1. So the server's own share is
level with bjoern's and below the other C servers'; what separates the totals is the time inside
the app, about 85% of the request. freastal, fastwsgi and fastpysgi never call `close()`, which
runs Django's request_finished handlers (~10 us of it). Green mode's app time is higher (the
monkey-patched `threading` that Django's locks and locals then use is Python). A 1.10x lead on
a Django request would need the server's ~20 us to fall to ~9 us with the app's time the same:
out of reach of the server alone. GC, thread hand-offs and the Python path showed no share of
their own in the profile (the C path answers Django's response: an iterable with close()).

## Latest results

"""


def show(r: dict, tag: str) -> None:
    if "skip" in r:
        print(f"{tag:12s} {r['server']:16s} SKIP {r['skip']}", flush=True)
    else:
        print(f"{tag:12s} {r['server']:16s} {r['rps']:10,.0f} req/s  "
              f"p99 {r['p99'] / 1000:8.2f} ms  cpu {r['cpu_share'] * 100:4.0f}%  "
              f"{r['rps_per_cpu']:10,.0f} req/CPU-s  errors {r['errors']}  "
              f"other {r['other_cpu'] * 100:3.0f}%"
              + (f"  [{r['post_check']}]" if r.get("post_check") else ""), flush=True)


def run_interleaved(scn: str, peers, args, tmp: str) -> list:
    """--interleave: every server of the scenario started at once (each pinned to CPU 0, idle
    while the others are measured), then measured in turn, the order reversed every other round.
    The machine's speed drifts by 20-40% within minutes; servers measured seconds apart in the
    same round see nearly the same machine, and no start-up or warm-up falls inside a round."""
    started = []
    results = []
    try:
        for peer in peers:
            st = Started(peer, scn, args, tmp)
            started.append(st)
            if st.skip:   # stopped at once: a server left in a bad state may spin meanwhile
                r = st.measure(args, 0)
                r["round"] = 0
                st.stop(r)
                results.append(r)
                show(r, scn)
        live = [st for st in started if not st.skip]
        for rnd in range(args.interleave):
            for st in (live if rnd % 2 == 0 else live[::-1]):
                r = st.measure(args, args.quiet_wait if rnd == 0 else 0)
                r["round"] = rnd
                results.append(r)
                show(r, f"{scn}#{rnd + 1}")
    finally:
        for st in started:
            if not st.skip:
                st.stop()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--install", action="store_true", help="pip/apt-install missing peers first")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per measured run (default: 2 with --interleave, else 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    ap.add_argument("--only", default="", help="comma-separated server names")
    ap.add_argument("--scenario", default="", help="comma-separated: " + ",".join(SCENARIOS))
    ap.add_argument("--quiet-wait", type=float, default=5.0,
                    help="before each run wait up to this long for other CPU load to settle")
    ap.add_argument("--retry-noisy", type=int, default=0,
                    help="re-measure a run up to N times while other CPU load was > 15%% of a "
                         "core, keeping the quietest")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --interleave 0: measure every server N times per scenario, "
                         "interleaved (the order reversed every other round), and report "
                         "medians (see README)")
    ap.add_argument("--interleave", type=int, default=8, metavar="N",
                    help="start every server of a scenario at once and measure them in turn, "
                         "N rounds of --duration each (servers kept running; replaces --rounds; "
                         "the default, 8, since a 2-core VM's speed drifts by 20%% from one "
                         "minute to the next; 0: one server at a time, --rounds times)")
    ap.add_argument("--readme", action="store_true", help="rewrite bench/README.md even if filtered")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite bench/README.md")
    ap.add_argument("--json", default="", help="write raw results to this file")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.interleave < 0:
        ap.error("--interleave must be positive")
    if args.interleave:
        args.rounds = args.interleave
    if args.duration is None:
        args.duration = 2.0 if args.interleave else 10.0

    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            print(f"{tool} not found (apt-get install -y {'wrk' if tool == 'wrk' else 'util-linux'})")
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    names = [n for n in args.only.split(",") if n]
    scns = [s for s in args.scenario.split(",") if s]
    for s in scns:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; one of {', '.join(SCENARIOS)}")
    known = {p.name for p in P.PEERS}
    for n in names:
        if n not in known:
            ap.error(f"unknown server {n!r}; one of {', '.join(sorted(known))}")
    selected = [p for p in P.PEERS if not names or p.name in names]
    scns = scns or list(SCENARIOS)

    unavailable = install(selected) if args.install else {}
    for p in selected:
        if p.name not in unavailable and not P.is_installed(p):
            unavailable[p.name] = "not installed (" + (P.install_error(p) if p.module
                                                       else "binary not found") + ")"
    print(f"spawning CLI works: {P.spawning_cli_works()}", flush=True)
    versions = {p.name: P.version(p) for p in selected if p.name not in unavailable}

    started = datetime.datetime.utcnow()
    t_start = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="spawning-bench-") as tmp:
        if args.interleave:
            for scn in scns:
                results += run_interleaved(scn, [p for p in selected if p.name not in unavailable
                                                 and scn in (p.scenarios or P.MAIN_SCENARIOS)],
                                           args, tmp)
        for scn, rnd, peer in ([] if args.interleave else schedule(scns, selected, args.rounds)):
                if peer.name in unavailable:
                    continue
                if scn not in (peer.scenarios or P.MAIN_SCENARIOS):
                    continue
                r = measure(peer, scn, args, tmp)
                for _ in range(args.retry_noisy):
                    if "skip" in r or r["other_cpu"] <= 0.15:
                        break
                    print(f"{scn:12s} {peer.name:16s} other CPU {r['other_cpu'] * 100:.0f}%, "
                          "measuring again", flush=True)
                    r2 = measure(peer, scn, args, tmp)
                    if "skip" not in r2 and r2["other_cpu"] < r["other_cpu"]:
                        r = r2
                r["round"] = rnd
                results.append(r)
                show(r, f"{scn}#{rnd + 1}" if args.rounds > 1 else scn)
    elapsed = time.monotonic() - t_start
    report = build_report(results, versions, unavailable, args, started, elapsed)
    print()
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    filtered = bool(names or args.scenario)
    if not args.no_readme and (args.readme or not filtered):
        with open(os.path.join(HERE, "README.md"), "w") as f:
            f.write(README_HEAD + report + "\n")
        print(f"wrote {os.path.join(HERE, 'README.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
