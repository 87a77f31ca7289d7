"""A long-poll chat: run it with green threads, one greenlet per waiting request.

    spawning -t 0 examples.longpoll_chat.app

GET /messages?since=N waits (up to 30 s) until there are messages after N and returns them as JSON;
POST /messages with a text body adds one and wakes every waiting request at once; GET / serves a
tiny page that drives both. One process holds tens of thousands of waiting requests: each costs a
parked greenlet and a few kilobytes.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from spawning import green

WAIT_SECONDS = 30
MAX_MESSAGES = 1000

messages: list[str] = []
first_id = 0                  # id of messages[0]; older ones were dropped
new_message = green.Event()   # replaced by a fresh Event after every post

PAGE = b"""<!doctype html><meta charset="utf-8"><title>chat</title>
<ul id="log"></ul><form id="f"><input id="t" autofocus><button>send</button></form>
<script>
let since = 0;
async function poll() {
  for (;;) {
    try {
      const r = await fetch('/messages?since=' + since);
      const d = await r.json();
      for (const m of d.messages) { const li = document.createElement('li'); li.textContent = m; log.append(li); }
      since = d.next;
    } catch (e) { await new Promise(ok => setTimeout(ok, 1000)); }
  }
}
f.onsubmit = e => { e.preventDefault(); fetch('/messages', {method: 'POST', body: t.value}); t.value = ''; };
poll();
</script>"""


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


def post(text: str) -> None:
    global new_message, first_id
    messages.append(text)
    if len(messages) > MAX_MESSAGES:
        del messages[:len(messages) - MAX_MESSAGES]
        first_id += 1
    # Wake everyone waiting on the current event; later waiters get a new one.
    event, new_message = new_message, green.Event()
    event.set()


def app(environ, start_response):
    method = environ["REQUEST_METHOD"]
    path = environ["PATH_INFO"]
    if path == "/" and method == "GET":
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(PAGE)))])
        return [PAGE]
    if path != "/messages":
        return _json(start_response, {"error": "not found"}, "404 Not Found")
    if method == "POST":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        text = environ["wsgi.input"].read(min(size, 4096)).decode("utf-8", "replace").strip()
        if text:
            post(text)
        return _json(start_response, {"next": first_id + len(messages)})
    try:
        since = int(parse_qs(environ.get("QUERY_STRING", "")).get("since", ["0"])[0])
    except ValueError:
        since = 0
    if since >= first_id + len(messages):
        new_message.wait(WAIT_SECONDS)     # suspends only this request's greenlet
    start = max(since - first_id, 0)
    return _json(start_response, {"messages": messages[start:], "next": first_id + len(messages)})
