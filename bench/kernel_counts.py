"""Kernel work per request, counted: what a server makes the kernel do for one request of a scenario.

Wall-clock CPU per request wobbles by 5-10% on a shared machine, and for a 64 KiB response the
kernel's part (the whole loopback TCP path of the send) is most of it. Event counts do not wobble:
this starts each server as bench/run.py does (one process group, pinned to CPU 0; wrk -t1 on
CPU 1 with the scenario's connections), warms it up, then counts over one wrk run, per request:
system calls by name, context switches, packets put on the loopback device, wake-ups of the
client's socket, page allocations, softirqs and timers (perf's software counters and tracepoints,
on every process of the server's group), and utime/stime from /proc (CPU time: noisy, for scale).
Needs perf with tracepoint access (root, or perf_event_paranoid <= -1).

    python bench/kernel_counts.py [--servers spawning,spawning-green,freastal,fastwsgi]
                                  [--scenario 64k] [--duration 3] [--warmup 1]

Counts that match across servers (say two packets and two wake-ups of the client a 64 KiB
response) show that the difference, if any, is not the kernel's work but what user space or
the scheduler adds to it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from typing import Any

import peers as P
import run as R

# (label, perf event): the rows of the table, per request
EVENTS = [
    ("context switches", "context-switches"),
    ("writev", "syscalls:sys_enter_writev"),
    ("write", "syscalls:sys_enter_write"),
    ("sendto", "syscalls:sys_enter_sendto"),
    ("sendmsg", "syscalls:sys_enter_sendmsg"),
    ("sendfile64", "syscalls:sys_enter_sendfile64"),
    ("recvfrom", "syscalls:sys_enter_recvfrom"),
    ("read", "syscalls:sys_enter_read"),
    ("epoll_wait", "syscalls:sys_enter_epoll_wait"),
    ("epoll_pwait", "syscalls:sys_enter_epoll_pwait"),
    ("epoll_ctl", "syscalls:sys_enter_epoll_ctl"),
    ("io_uring_enter", "syscalls:sys_enter_io_uring_enter"),
    ("futex", "syscalls:sys_enter_futex"),
    ("clock_nanosleep", "syscalls:sys_enter_clock_nanosleep"),
    ("packets sent (lo)", "net:net_dev_xmit"),
    ("sk_data_ready", "sock:sk_data_ready"),
    ("pages allocated", "kmem:mm_page_alloc"),
    ("softirqs", "irq:softirq_entry"),
    ("timers started", "timer:timer_start"),
    ("hrtimers started", "timer:hrtimer_start"),
    ("sched wake-ups", "sched:sched_waking"),
]


def perf_counts(pids: list, seconds_hint: float, run: Callable[[], Any]) -> tuple[dict, Any]:
    """Counts EVENTS on pids while run() runs; returns ({event: count}, run's result)."""
    fd, path = tempfile.mkstemp(prefix="kcounts-", suffix=".csv")
    os.close(fd)
    argv = ["perf", "stat", "-x", ",", "-o", path, "-e", ",".join(e for _, e in EVENTS),
            "-p", ",".join(str(p) for p in pids)]
    perf = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = run()
    finally:
        perf.send_signal(2)   # SIGINT: perf writes its counts and exits
        perf.wait(30 + seconds_hint)
    counts: dict = {}
    with open(path) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[0].replace(".", "").isdigit():
                counts[fields[2]] = float(fields[0])
    os.unlink(path)
    return counts, result


def proc_times(pids: list) -> tuple[int, int]:
    """utime, stime (clock ticks) summed over pids' threads."""
    u = s = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                u += int(fields[11])
                s += int(fields[12])
        except OSError:
            pass
    return u, s


def measure(name: str, scenario: str, a: argparse.Namespace, tmp: str) -> dict:
    peer = next(p for p in P.PEERS if p.name == name)
    st = R.Started(peer, scenario, types.SimpleNamespace(warmup=a.warmup), tmp)
    try:
        if st.skip:
            return {"skip": st.skip}
        pids = R.group_pids(st.srv.pgid)
        t0 = proc_times(pids)
        counts, (stats, _) = perf_counts(
            pids, a.duration, lambda: R.run_wrk(st.port, st.script, st.connections, a.duration))
        t1 = proc_times(pids)
        n = max(1, stats["requests"])
        per = {label: counts.get(ev, 0.0) / n for label, ev in EVENTS}
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        per["user us (noisy)"] = (t1[0] - t0[0]) * tick_us / n
        per["sys us (noisy)"] = (t1[1] - t0[1]) * tick_us / n
        per["requests"] = float(n)
        return per
    finally:
        if st.srv is not None:
            st.srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", default="spawning,spawning-green,freastal,fastwsgi")
    ap.add_argument("--scenario", default="64k", choices=sorted(R.SCENARIOS))
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    a = ap.parse_args()
    names = a.servers.split(",")
    unknown = [n for n in names if n not in {p.name for p in P.PEERS}]
    if unknown:
        sys.exit(f"unknown server(s): {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        res = {n: measure(n, a.scenario, a, tmp) for n in names}
    print(f"per request, scenario {a.scenario}:")
    print(f"{'':22s}" + "".join(f"{n[:14]:>15s}" for n in names))
    rows = ["requests"] + [label for label, _ in EVENTS] + ["user us (noisy)", "sys us (noisy)"]
    for row in rows:
        cells = []
        for n in names:
            r = res[n]
            if "skip" in r:
                cells.append(f"{'skipped':>15s}")
            elif row == "requests":
                cells.append(f"{r[row]:15,.0f}")
            else:
                cells.append(f"{r[row]:15.3f}")
        if row in ("requests", "user us (noisy)", "sys us (noisy)") or any(
                "skip" not in res[n] and res[n][row] >= 0.0005 for n in names):
            print(f"{row:22s}" + "".join(cells))
    for n in names:
        if "skip" in res[n]:
            print(f"{n}: {res[n]['skip']}")


if __name__ == "__main__":
    main()
