"""The status page: one self-contained HTML document (inline CSS and script, no external assets)
that refreshes itself, and the formatting of figures for people, shared with the terminal table
of ``spawning status`` (spawning.status.command).
"""

from __future__ import annotations

import html
import json
import math
import time
from typing import Any

from .model import DURATION_BOUNDS, RATE_WINDOW, STATUS_CLASSES

#: Seconds between two refreshes of the HTML page.
REFRESH = 2
#: A heartbeat older than this marks a worker as unresponsive on the page.
STALE_HEARTBEAT = 3.0


# ---- formatting ----------------------------------------------------------------------------------------


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds >= DURATION_BOUNDS[-1]:
        return f"> {DURATION_BOUNDS[-1]:g} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1000:.1f} ms" if seconds < 0.01 else f"{seconds * 1000:.0f} ms"


def fmt_q(duration: dict[str, Any], key: str) -> str:
    """A quantile of a ``duration`` object: one that fell in the first bucket reads as "< bound"
    (all the histogram knows of it), not as a figure interpolated from zero."""
    if key in (duration.get("below") or ()):
        return f"< {fmt_ms(duration[key])}"
    return fmt_ms(duration[key])


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "–"
    return f"{rate:.1f}" if rate < 100 else f"{rate:,.0f}"


def fmt_int(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def fmt_time(epoch: float | None) -> str:
    return "–" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


# ---- the HTML page -------------------------------------------------------------------------------------

_CSS = """
:root{--bg:#f4f5f7;--card:#fff;--ink:#1d2330;--muted:#6b7385;--line:#e3e6eb;--accent:#0f766e;
--ok:#15803d;--okbg:#dcfce7;--warn:#b45309;--warnbg:#fef3c7;--info:#1d4ed8;--infobg:#dbeafe;
--bad:#b91c1c;--badbg:#fee2e2;--violet:#6d28d9;--violetbg:#ede9fe}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#111827;color:#f9fafb;padding:14px 28px;display:flex;align-items:center;gap:14px;
flex-wrap:wrap}
header .brand{font-weight:700;font-size:18px;letter-spacing:.3px}
header .brand span{color:#5eead4}
header .app{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#d1d5db}
header .updated{margin-left:auto;color:#9ca3af;font-size:12px}
main{padding:20px 28px;max-width:1500px;margin:0 auto}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin-bottom:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.6px}
.card .value{font-size:24px;font-weight:650;margin-top:2px;font-variant-numeric:tabular-nums}
.card .sub{color:var(--muted);font-size:12px}
.grid{display:grid;grid-template-columns:minmax(300px,1fr) minmax(300px,1fr);gap:16px;margin-bottom:16px}
.box{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;
margin-bottom:16px}
.grid .box{margin-bottom:0}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.7px;color:var(--muted);margin:0 0 10px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:var(--muted)}dd{margin:0;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th{text-align:left;font-weight:600;color:var(--muted);font-size:12px;border-bottom:1px solid var(--line);
padding:6px 8px;white-space:nowrap}
td{padding:6px 8px;border-bottom:1px solid var(--line);white-space:nowrap}
td.num,th.num{text-align:right}
td.reason{white-space:normal;color:var(--muted);font-size:12.5px;max-width:340px}
tr:last-child td{border-bottom:none}
.pill{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600}
.ready,.running{background:var(--okbg);color:var(--ok)}
.starting{background:var(--infobg);color:var(--info)}
.draining,.graceful,.delaying{background:var(--warnbg);color:var(--warn)}
.retiring{background:var(--violetbg);color:var(--violet)}
.immediate,.down{background:var(--badbg);color:var(--bad)}
.stale{color:var(--bad);font-weight:600}
.bars{display:grid;grid-template-columns:70px 1fr 70px;gap:4px 10px;align-items:center}
.bar{height:12px;background:#eef0f3;border-radius:3px;overflow:hidden}
.bar i{display:block;height:100%;background:var(--accent)}
.bar i.c4{background:#d97706}.bar i.c5{background:#dc2626}.bar i.c3{background:#2563eb}
.bars .l{color:var(--muted);font-size:12px}.bars .n{text-align:right;font-size:12px}
.hist{display:flex;align-items:flex-end;gap:3px;height:90px;margin-top:8px}
.hist div{flex:1;background:var(--accent);border-radius:2px 2px 0 0;min-height:1px;opacity:.85}
.histl{display:flex;gap:3px;font-size:10px;color:var(--muted)}
.histl span{flex:1;text-align:center;white-space:nowrap}
h2 .unit{text-transform:none;letter-spacing:0;font-weight:400}
.q{display:flex;gap:18px;margin-top:10px;font-size:13px}.q b{font-variant-numeric:tabular-nums}
details summary{cursor:pointer;color:var(--muted);font-weight:600}
footer{color:var(--muted);font-size:12px;padding:0 28px 24px;max-width:1500px;margin:0 auto}
footer a{color:var(--accent)}
.empty{color:var(--muted);font-style:italic}
"""

_JS = """
(function(){
  var failed=0;
  function refresh(){
    fetch(location.pathname,{cache:'no-store'}).then(function(r){
      if(!r.ok)throw new Error(r.status);return r.text();
    }).then(function(text){
      var doc=new DOMParser().parseFromString(text,'text/html');
      ['main','#updated'].forEach(function(sel){
        var now=document.querySelector(sel),next=doc.querySelector(sel);
        if(now&&next)now.replaceWith(next);
      });
      failed=0;
    }).catch(function(){
      failed++;var u=document.querySelector('#updated');
      if(u)u.innerHTML='<span class="pill down">controller unreachable</span>';
    });
  }
  setInterval(refresh,%d);
})();
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _card(label: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{value}</div>'
            f'<div class="sub">{sub}</div></div>')


def render_html(doc: dict[str, Any]) -> str:
    """The status page: self-contained (inline CSS and script), refreshes itself every ``REFRESH`` s."""
    srv, tot = doc["server"], doc["totals"]
    workers = doc["workers"]
    ready = tot["workers"].get("ready", 0) + tot["workers"].get("retiring", 0)
    gen = f"{srv['generation']}" if srv["generation"] is not None else "–"
    if srv.get("pending_generation") is not None:
        gen += f' <span class="pill starting">{srv["pending_generation"]} booting</span>'
    cards = "".join([
        _card("Requests / s", fmt_rate(tot["requests_per_second"]), f"over the last {RATE_WINDOW:g} s"),
        _card("Requests", fmt_int(tot["requests"]), f"{fmt_bytes(tot['bytes_out'])} sent"),
        _card("In flight", fmt_int(tot["in_flight"]), f"{fmt_int(tot['connections'])} connections open"),
        _card("Workers", f"{ready} / {srv['processes']}", "ready / wanted"),
        _card("Latency p50", _e(fmt_q(tot["duration"], "p50")), f"p99 {_e(fmt_q(tot['duration'], 'p99'))}"),
        _card("Memory (USS)", fmt_bytes(tot["memory"]["uss"]), f"RSS {fmt_bytes(tot['memory']['rss'])}"),
        _card("Generation", gen, f"{srv['reloads']} reload{'s' if srv['reloads'] != 1 else ''}"),
    ])
    listen = "".join(_listen_line(entry) for entry in doc["listen"])
    restarts = ", ".join(f"{_e(k.replace('_', ' '))}: {v}" for k, v in sorted(doc["restarts"].items())) \
        or '<span class="empty">none</span>'
    controller = f"""<div class="box"><h2>Controller</h2><dl>
<dt>State</dt><dd><span class="pill {_e(srv['state'])}">{_e(srv['state'])}</span></dd>
<dt>PID</dt><dd>{_e(srv['pid'])}</dd>
<dt>Started</dt><dd>{fmt_time(srv['started_at'])} <span class="sub">(up {fmt_age(srv['uptime'])})</span></dd>
<dt>Application</dt><dd><code>{_e(srv['app'])}</code></dd>
<dt>Mode</dt><dd>{_e(srv['processes'])} processes × {
        'green threads' if srv['mode'] == 'green' else f"{srv['threads']} threads"}</dd>
<dt>Listening</dt><dd>{listen or '<span class="empty">none</span>'}</dd>
<dt>Last reload</dt><dd>{_e(srv['last_reload_reason'] or '–')}</dd>
<dt>Worker restarts</dt><dd>{restarts}</dd>
<dt>Server</dt><dd>spawning {_e(srv['version'])} · Python {_e(srv['python'])} · {_e(srv['hostname'])}</dd>
</dl></div>"""
    responses = f'<div class="box"><h2>Responses</h2>{_class_bars(tot["status_classes"])}' \
                f'{_histogram(tot["duration"], doc["duration_bounds"])}</div>'
    rows = "".join(_worker_row(w) for w in workers) or \
        '<tr><td colspan="14" class="empty">no workers</td></tr>'
    table = f"""<div class="box"><h2>Workers</h2><table>
<thead><tr><th>PID</th><th>Gen</th><th>State</th><th class="num">Age</th><th class="num">Requests</th>
<th class="num">Req/s</th><th class="num">In flight</th><th class="num">Conns</th><th class="num">p50</th>
<th class="num">p99</th><th class="num">4xx · 5xx</th><th class="num">RSS</th><th class="num">USS</th>
<th>Started because</th></tr></thead>
<tbody>{rows}</tbody></table></div>"""
    config_rows = "".join(f"<tr><td><code>{_e(k)}</code></td><td class=\"mono\">{_e(json.dumps(v))}</td></tr>"
                          for k, v in doc["config"].items())
    config = f'<details class="box"><summary>Configuration</summary><table>{config_rows}</table></details>'
    links = '<a href="status.json">status.json</a> · <a href="metrics">metrics</a>'
    if srv.get("coverage"):
        links += ' · <a href="_coverage/">coverage</a>'
    title = f"spawning · {srv['app'] or 'status'}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><link rel="icon" href="data:,">
<noscript><meta http-equiv="refresh" content="{REFRESH}"></noscript>
<style>{_CSS}</style></head>
<body><header><div class="brand">spawning<span>.</span></div><div class="app">{_e(srv['app'] or '')}</div>
<span class="pill {_e(srv['state'])}">{_e(srv['state'])}</span>
<div class="updated" id="updated">updated {time.strftime('%H:%M:%S', time.localtime(doc['time']))}
· refreshes every {REFRESH} s</div></header>
<main><div class="cards">{cards}</div>
<div class="grid">{controller}{responses}</div>
{table}{config}</main>
<footer>{links} · pid {_e(srv['pid'])}</footer>
<script>{_JS % (REFRESH * 1000)}</script>
</body></html>
"""


def _listen_line(entry: dict[str, Any]) -> str:
    queue = ""
    if entry["accept_queue"] is not None:
        queue = f' <span class="sub">accept queue {entry["accept_queue"]} of {entry["backlog"]}</span>'
    return f"<div><code>{_e(entry['address'])}</code>{queue}</div>"


def _class_bars(classes: dict[str, int]) -> str:
    total = sum(classes.values()) or 1
    rows = []
    for name in STATUS_CLASSES[1:]:
        n = classes.get(name, 0)
        rows.append(f'<span class="l">{name}</span><div class="bar"><i class="c{name[0]}" '
                    f'style="width:{100 * n / total:.1f}%"></i></div><span class="n">{n:,}</span>')
    return f'<div class="bars">{"".join(rows)}</div>'


def _histogram(duration: dict[str, Any], bounds: list[float]) -> str:
    counts = duration["counts"]
    # A log scale, so that a tail of slow requests stays visible next to a peak of fast ones.
    peak = math.log1p(max(counts)) or 1.0
    cols = "".join(f'<div title="{n:,} requests" style="height:{max(0.5, 100 * math.log1p(n) / peak):.1f}%">'
                   f'</div>' for n in counts)
    labels = "".join(f"<span>{_bound_label(b)}</span>" for b in bounds) + f"<span>&gt;{_bound_label(bounds[-1])}</span>"
    return (f'<h2 style="margin-top:16px">Request duration <span class="unit">(upper bounds in ms; '
            f'heights on a log scale)</span>'
            f'</h2><div class="hist">{cols}</div>'
            f'<div class="histl">{labels}</div><div class="q">'
            f'<span>mean <b>{fmt_ms(duration["mean"])}</b></span><span>p50 <b>{_e(fmt_q(duration, "p50"))}</b>'
            f'</span><span>p90 <b>{_e(fmt_q(duration, "p90"))}</b></span><span>p99 <b>'
            f'{_e(fmt_q(duration, "p99"))}</b></span><span>{duration["count"]:,} timed</span></div>')


def _bound_label(bound: float) -> str:
    """A bucket's upper bound under its bar: milliseconds without a unit (the axis says so),
    microseconds and seconds with one."""
    if bound < 0.001:
        return f"{bound * 1e6:g}µs"
    return f"{bound * 1000:g}" if bound < 1 else f"{bound:g}s"


def _worker_row(w: dict[str, Any]) -> str:
    hb = w["last_heartbeat_age"]
    stale = hb is not None and hb > STALE_HEARTBEAT and w["state"] != "starting"
    state = f'<span class="pill {_e(w["state"])}">{_e(w["state"])}</span>'
    if stale:
        state += f' <span class="stale" title="no heartbeat for {hb:.0f} s">⚠ {hb:.0f} s</span>'
    reason = w["start_reason"] or ""
    if w.get("retiring"):
        reason = f"{reason} — retiring: {w['retiring']}"
    in_flight = fmt_int(w["in_flight"])
    if w["oldest_request_age"] is not None:
        in_flight += f' <span class="sub">({fmt_age(w["oldest_request_age"])})</span>'
    c = w["status_classes"]
    return (f'<tr><td class="mono">{w["pid"]}</td><td>{_e(w["generation"])}</td><td>{state}</td>'
            f'<td class="num">{fmt_age(w["age"])}</td><td class="num">{fmt_int(w["requests"])}</td>'
            f'<td class="num">{fmt_rate(w["requests_per_second"])}</td><td class="num">{in_flight}</td>'
            f'<td class="num">{fmt_int(w["connections"])}</td><td class="num">{_e(fmt_q(w["duration"], "p50"))}'
            f'</td><td class="num">{_e(fmt_q(w["duration"], "p99"))}</td>'
            f'<td class="num">{c["4xx"]:,} · {c["5xx"]:,}</td>'
            f'<td class="num">{fmt_bytes(w["memory"]["rss"])}</td>'
            f'<td class="num">{fmt_bytes(w["memory"]["uss"])}</td><td class="reason">{_e(reason)}</td></tr>')
