#!/bin/bash
# User and kernel CPU time per request of one server, from /proc: where a request's cost goes.
#
#   bench/cpu_split.sh PORT [PATH] -- CMD...     e.g.
#   bench/cpu_split.sh 8096 -- python -m spawning -s 1 -t 4 -p 8096 -l /dev/null apps:hello
#
# Starts CMD pinned to CPU 0 (from bench/, so `apps` imports), warms up with wrk on CPU 1 for a
# second, then runs wrk -t1 -c100 for 5 s on http://127.0.0.1:PORT/PATH and prints the user and
# system microseconds per request summed over CMD's process and its children. Stops only CMD.
# WRK_SCRIPT=file.lua adds `-s file.lua` to both wrk runs (a POST body, say).
set -euo pipefail
PORT=$1; shift
URLPATH=""
if [ "${1:-}" != "--" ]; then URLPATH=$1; shift; fi
[ "${1:-}" = "--" ] && shift
cd "$(dirname "$0")"
taskset -c 0 "$@" > /dev/null 2>&1 &
P=$!
trap 'kill $P 2>/dev/null; wait $P 2>/dev/null' EXIT
sleep 1.5
SCRIPT_ARGS=()
if [ -n "${WRK_SCRIPT:-}" ]; then SCRIPT_ARGS=(-s "$WRK_SCRIPT"); fi
taskset -c 1 wrk -t1 -c100 -d1s "${SCRIPT_ARGS[@]}" "http://127.0.0.1:$PORT/$URLPATH" > /dev/null
cpu() {   # utime and stime (clock ticks) of P and its children; the name may hold spaces
    for p in $P $(pgrep -P $P); do sed 's/.*) //' /proc/$p/stat | awk '{print $12, $13}'; done |
        awk '{u += $1; s += $2} END {print u, s}'
}
read -r u0 s0 < <(cpu)
out=$(taskset -c 1 wrk -t1 -c100 -d5s "${SCRIPT_ARGS[@]}" "http://127.0.0.1:$PORT/$URLPATH")
read -r u1 s1 < <(cpu)
n=$(echo "$out" | awk '/requests in/ {print $1}')
python3 -c "
import os
tick = 1e6 / os.sysconf('SC_CLK_TCK'); n = $n
u = ($u1 - $u0) * tick / n; s = ($s1 - $s0) * tick / n
print(f'{n} requests: user {u:.2f} us + sys {s:.2f} us = {u + s:.2f} us per request -> {1e6 / (u + s):,.0f} req/CPU-s')"
