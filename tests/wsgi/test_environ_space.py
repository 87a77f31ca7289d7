"""The environ's two makers against each other over the space of valid heads: the C runner
(csrc/py/environ.c, env.c's iterator over the head the core kept, with its key table, repeat
handling and value-str reuse) and the Python path (spawning/wsgi/environ.py over the block
sp_env_pack packs; what PyPy and SPAWNING_NO_PYFAST=1 run). tests/wsgi/test_environ.py holds
chosen awkward heads; this test draws ~1,500 from a fixed seed over the dimensions that matter
(methods, target forms and escapes, versions, names in any case and every one the runner's key
table treats apart, repeats anywhere, empty and padded values, obs-text, many fields, long names
and values, bodies by Content-Length or chunked) and sends each to four real servers (thread and
green mode, each on both paths), two or three times in a row on one connection (the runner
reuses the last request's value strs, and keeps a repeat's environ: a stale one would show in the
repeat) and after a different head. Every answer must be the same, and what env.c's iterator
owns (which both share) must be what the rules say (expected(), written from RFC 9110/9112 and
PEP 3333). SPAWNING_ENV_SEED=N replays another seed (a failure prints its seed)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import read_response, start_server

from spawning._core import lib

SEED = int(os.environ.get("SPAWNING_ENV_SEED", "20261207"))
HEADS = 1500
# Whether the core has the C runner: CPython, and not built with SPAWNING_NO_PYFAST=1 (sp_py_setup
# is -ENOSYS then); without it every server runs the Python path.
C_RUNNER = sys.implementation.name == "cpython" and lib.sp_py_setup() == 0
MAX_FIELDS = 100          # --limit-request-fields' default (csrc/http/sp_limits.h)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TCHAR_NO_UNDER = TCHAR.replace("_", "")
# Bytes of a field value (RFC 9110 5.5): VCHAR, SP, HTAB, obs-text; none at either end but VCHAR/obs.
VCHAR = bytes(range(0x21, 0x7F))
OBS = bytes(range(0x80, 0x100))
# Bytes of a path segment left as they are (RFC 3986 pchar without pct-encoded), and obs-text,
# which the parser takes raw in a target (csrc/http/parser.c, C_TARGET).
PCHAR = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@"

# Every name csrc/py/environ.c and env.c treat apart, and a browser's usual ones.
KNOWN = ["Host", "Content-Type", "Content-Length", "Cookie", "Accept", "Accept-Encoding",
         "Accept-Language", "Accept-Charset", "User-Agent", "Referer", "Authorization",
         "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port",
         "X-Forwarded-Ssl", "Forwarded", "Proxy", "Sec-Fetch-Dest", "Sec-Fetch-Mode",
         "Sec-Fetch-Site", "Sec-Fetch-User", "Cache-Control", "If-None-Match", "Origin",
         "Upgrade-Insecure-Requests", "X-Request-Id", "Te", "Via", "DNT"]
# Values common in real traffic, and at the lengths where the runner's compares change.
POOL_VALUES = [b"", b"1", b"text/html", b"gzip, deflate, br", b"en-US,en;q=0.9",
               b"Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
               b"same-origin", b"no-cache", b"a=1; b=2", b"\xe9t\xe9", b"x" * 160, b"y" * 161,
               b"abcdefghijklmnopqrstuvwxyz012345"]


def mixed_case(rng: random.Random, name: str) -> str:
    pick = rng.random()
    if pick < 0.4:
        return name
    if pick < 0.6:
        return name.lower()
    if pick < 0.75:
        return name.upper()
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)


def random_name(rng: random.Random) -> str:
    """A token: any length class the key table and the word-wise compares treat apart (1-3, 4-7,
    8-16, 17-42, past 42: KEY_MAX), with '_' now and then (dropped with its repeats)."""
    n = rng.choice([1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 42, 43, 44, 60, 100, 300])
    chars = TCHAR if rng.random() < 0.15 else TCHAR_NO_UNDER
    return "".join(rng.choice(chars) for _ in range(n))


# Values a trusted proxy sends (the servers trust 127.0.0.1, the default, and take Host and port
# from it: --forwarded-host), so that spawning.wsgi.forwarded rewrites the environ now and then.
PROXY_VALUES = {
    "x-forwarded-for": [b"192.0.2.1", b"192.0.2.1:4711", b"10.0.0.1, 127.0.0.1", b"[2001:db8::1]:80",
                        b"unknown", b"1.2.3.4,\t5.6.7.8"],
    "x-forwarded-proto": [b"https", b"http", b"HTTPS", b"ftp", b"http, https"],
    "x-forwarded-ssl": [b"on", b"off"],
    "x-forwarded-host": [b"example.com", b"example.com:8443", b"bad host", b"[::1]:8080"],
    "x-forwarded-port": [b"8443", b"99999", b"x"],
    "forwarded": [b"for=192.0.2.60;proto=https;host=h.example", b'for="[2001:db8:cafe::17]:4711"',
                  b"for=_hidden, for=198.51.100.17", b"For=unknown;by=203.0.113.43", b"proto=https"],
}


def random_value(rng: random.Random, name: str, seen: dict[str, bytes], small: bool) -> bytes:
    """A value for name; seen maps the names of earlier heads (lower-cased) to their last value;
    small: at most 33 bytes of its own."""
    pick = rng.random()
    if name.lower() in PROXY_VALUES and pick < 0.6:
        return rng.choice(PROXY_VALUES[name.lower()])
    last = seen.get(name.lower())
    if last is not None and pick < 0.3:
        if pick < 0.1:
            return last
        # One byte off the name's last value, of the same length: the runner reuses the str it
        # made for the key's last value when the bytes compare equal, so a compare that looked
        # at too few of them would hand this request the last one's.
        v = bytearray(last)
        if v:
            v[rng.randrange(len(v))] = rng.choice(VCHAR)
        return bytes(v)
    if pick < 0.5:
        return rng.choice(POOL_VALUES)
    n = rng.choice([0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33] + ([] if small else [
        100, 160, 161, 500, 1023, 1024, 1025, 3000]))
    obs = rng.random() < 0.2
    inner = VCHAR + b" \t" + (OBS if obs else b"")
    edge = VCHAR + (OBS if obs else b"")
    if n == 0:
        return b""
    if n <= 2:
        return bytes(rng.choice(edge) for _ in range(n))
    return bytes([rng.choice(edge)]) + bytes(rng.choice(inner) for _ in range(n - 2)) \
        + bytes([rng.choice(edge)])


def ows(rng: random.Random) -> bytes:
    return rng.choice([b"", b"", b"", b" ", b"  ", b"\t", b" \t ", b"\t\t"])


def random_segment(rng: random.Random) -> bytes:
    out = bytearray()
    for _ in range(rng.choice([0, 1, 3, 8, 20])):
        pick = rng.random()
        if pick < 0.7:
            out += bytes([rng.choice(PCHAR)])
        elif pick < 0.9:
            b = rng.choice([0x2F, 0x20, 0x25, 0x3F, 0x23, 0xE9, 0xC3, 0xFF, 0x80, 0x7E,
                            rng.randrange(1, 256)])
            out += (b"%%%02X" if rng.random() < 0.5 else b"%%%02x") % b
        else:
            out += bytes([rng.choice(OBS)])
    return bytes(out)


def random_target(rng: random.Random, method: bytes) -> tuple[bytes, bytes | None]:
    """(target, authority of an absolute-form target or None)."""
    if method == b"OPTIONS" and rng.random() < 0.3:
        return b"*", None
    path = b"".join(b"/" + random_segment(rng) for _ in range(rng.choice([0, 1, 1, 2, 3, 6])))
    if rng.random() < 0.05:   # a long path, up to the request line's limit (8190)
        path += b"/" + b"".join(random_segment(rng) for _ in range(rng.choice([100, 300])))[:7000]
    if rng.random() < 0.5:
        query = b"?" + b"".join(rng.choice([b"a=1", b"&", b"=", b"%20", b"%2F", b"?", b"/", b"x",
                                            b"%E9", b"\xe9", b"+"])
                                for _ in range(rng.choice([0, 1, 4, 12])))
    else:
        query = b""
    if rng.random() < 0.15:
        scheme = rng.choice([b"http://", b"https://", b"HTTP://"])
        auth = rng.choice([b"example.org", b"a.b:8080", b"[::1]:80", b"127.0.0.1", b"h"])
        return scheme + auth + path + query, auth
    return (path or b"/") + query, None


def random_head(rng: random.Random, seen: dict[str, bytes]) -> bytes:
    """One valid request head (and its body); seen: as random_value's, updated."""
    method = rng.choice([b"GET"] * 6 + [b"POST"] * 3 + [b"PUT", b"DELETE", b"PATCH", b"OPTIONS",
                                                          b"PURGE", b"M-SEARCH", b"get", b"Post",
                                                          b"X~!#$%&'*+.^_`|"])
    target, auth = random_target(rng, method)
    minor = 0 if rng.random() < 0.2 else 1
    fields: list[tuple[bytes, bytes]] = []
    body = b""
    framing: list[tuple[bytes, bytes]] = []
    if method in (b"POST", b"PUT", b"PATCH") and rng.random() < 0.8:
        body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 17, 1000])))
        if minor == 1 and rng.random() < 0.4:
            framing.append((mixed_case(rng, "Transfer-Encoding").encode(), b"chunked"))
            chunks, at = [], 0
            while at < len(body):
                k = rng.randint(1, 400)
                chunks.append(b"%x\r\n" % len(body[at:at + k]) + body[at:at + k] + b"\r\n")
                at += k
            encoded = b"".join(chunks) + b"0\r\n\r\n"
        else:
            n = str(len(body)).encode()
            value = rng.choice([n, n, n, n + b", " + n, b"0" + n])
            framing.append((mixed_case(rng, "Content-Length").encode(), value))
            encoded = body
        if rng.random() < 0.5:
            framing.append((mixed_case(rng, "Content-Type").encode(),
                            rng.choice([b"application/x-www-form-urlencoded", b"text/plain; charset=latin-1",
                                        b"multipart/form-data; boundary=xyz", b""])))
    else:
        encoded = b""
    # Half the heads small, as a browser's are: the core remembers a connection's last head up to
    # 1 KiB (SP_REPEAT_MAX) and answers its repeat with a repeat code, whose environ the runner keeps.
    small = rng.random() < 0.5
    want = rng.choice([0, 1, 2, 3, 5, 8, 12] if small else [20, 30, 47, 48, 49, 60, 80, MAX_FIELDS])
    has_host = minor == 1 or rng.random() < 0.6
    budget = MAX_FIELDS - len(framing) - has_host - (minor == 0)   # 1.0: Connection: keep-alive
    names: list[str] = []
    earlier = list(itertools.islice(seen, 200))   # names of earlier heads
    for _ in range(max(0, min(want, budget))):
        pick = rng.random()
        if names and pick < 0.2:
            name = mixed_case(rng, rng.choice(names))       # a repeat, in any spelling
        elif pick < 0.3:
            # One byte off a known name: the runner's key table tells names by their first and
            # last words, and compares the middle only past 16 bytes.
            name = list(rng.choice(KNOWN[1:] + names + earlier))
            name[rng.randrange(len(name))] = rng.choice(TCHAR_NO_UNDER)
            name = mixed_case(rng, "".join(name))
        elif pick < 0.65:
            name = mixed_case(rng, rng.choice(KNOWN[1:]))
            if name.lower() in ("content-length", "content-type") and rng.random() < 0.7:
                # Mostly renamed: Content-Length stays the body's (renamed below, always), and a
                # Content-Type beside the body's is joined with it now and then, not every time.
                name = mixed_case(rng, "X-" + name)
        else:
            name = random_name(rng)
        if name.lower() in ("content-length", "transfer-encoding", "host", "connection", "te",
                            "expect", "upgrade"):
            name = "X-Was-" + name
        value = random_value(rng, name, seen, small)
        seen[name.lower()] = value
        names.append(name)
        fields.append((name.encode(), value))
    if has_host:
        host = auth if auth is not None and rng.random() < 0.5 else \
            rng.choice([b"example.org", b"127.0.0.1:8080", b"x", b"", b"[::1]", b"EXAMPLE.org:1"])
        fields.insert(rng.randint(0, len(fields)), (mixed_case(rng, "Host").encode(), host))
    for f in framing:
        fields.insert(rng.randint(0, len(fields)), f)
    if minor == 0:
        fields.insert(rng.randint(0, len(fields)), (b"Connection", b"keep-alive"))
    lines = [method + b" " + target + b" HTTP/1.%d" % minor]
    lines += [name + b":" + ows(rng) + value + ows(rng) for name, value in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n" + encoded


def heads(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    seen: dict[str, bytes] = {}
    out = []
    while len(out) < HEADS:
        head = random_head(rng, seen)
        if len(head.partition(b"\r\n\r\n")[0]) < 60000:   # the head limit (SP_DEFAULT_MAX_HEAD_SIZE)
            out.append(head)
    return out


def space(sent: list[bytes]) -> dict[str, int]:
    """How many heads reach each corner of the space: the test asserts each is reached, so that
    a change to the generator cannot quietly leave one out."""
    tally = dict.fromkeys(("HTTP/1.0", "absolute-form", "asterisk", "%2F", "obs-text target",
                           "repeat", "cookie repeat", "'_' name", "name past KEY_MAX", "obs-text value",
                           "empty value", "HTAB", "48+ fields", "100 fields", "value past 1024",
                           "joined past 1024", "chunked", "Content-Length list", "X-Forwarded-For", "head within SP_REPEAT_MAX"), 0)
    for raw in sent:
        head = raw.partition(b"\r\n\r\n")[0]
        line, *fields = head.split(b"\r\n")
        target = line.split(b" ")[1]
        pairs = [(n.lower(), v.strip(b" \t")) for n, _, v in (f.partition(b":") for f in fields)]
        names = [n for n, _ in pairs]
        lengths: dict[bytes, int] = {}
        for n, v in pairs:
            lengths[n] = lengths.get(n, -2) + 2 + len(v)
        hits = {
            "HTTP/1.0": line.endswith(b"1.0"), "absolute-form": target[:1] not in (b"/", b"*"),
            "asterisk": target == b"*", "%2F": b"%2f" in target.lower(),
            "obs-text target": any(b >= 0x80 for b in target),
            "repeat": len(set(names)) < len(names), "cookie repeat": names.count(b"cookie") > 1,
            "'_' name": any(b"_" in n for n in names), "name past KEY_MAX": any(len(n) > 42 for n in names),
            "obs-text value": any(b >= 0x80 for _, v in pairs for b in v),
            "empty value": any(not v for _, v in pairs), "HTAB": b"\t" in head,
            "48+ fields": len(fields) >= 48, "100 fields": len(fields) == MAX_FIELDS,
            "value past 1024": any(len(v) > 1024 for _, v in pairs),
            "joined past 1024": any(k > 1024 and names.count(n) > 1 for n, k in lengths.items()),
            "chunked": b"chunked" in head.lower(), "Content-Length list": any(
                n == b"content-length" and b"," in v for n, v in pairs),
            "X-Forwarded-For": b"x-forwarded-for" in names, "head within SP_REPEAT_MAX": len(head) + 4 <= 1024,
        }
        for k, hit in hits.items():
            tally[k] += hit
    return tally


# The C runner's servers clear SPAWNING_NO_PYFAST, so that a run with it set (to test the Python
# path) still compares the two; on PyPy both are the Python path.
MODES = {"thread-c": ("4", {"SPAWNING_NO_PYFAST": ""}), "thread-py": ("4", {"SPAWNING_NO_PYFAST": "1"}),
         "green-c": ("0", {"SPAWNING_NO_PYFAST": ""}), "green-py": ("0", {"SPAWNING_NO_PYFAST": "1"})}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict]:
    started = {}
    try:
        for mode, (threads, env) in MODES.items():
            started[mode] = start_server("-s", "1", "-t", threads, "--forwarded-host",
                                         "env_dump_app.application", env=env)
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def body_of(msg: bytes) -> bytes:
    """The body a message sends (chunked as random_head writes it: no extensions, no trailers)."""
    head, _, rest = msg.partition(b"\r\n\r\n")
    if b"chunked" not in head.lower():
        return rest
    body = b""
    while True:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return body
        body, rest = body + rest[:n], rest[n + 2:]


def run_heads(port: int, sent: list[bytes], rng: random.Random) -> list[list[tuple[bytes, dict]]]:
    """Each head two or three times in a row on one connection (pipelined now and then; the core
    gives a repeat a repeat code, and the runner makes the first repeat's environ and copies it
    for the next), now and then the last time on a new connection (which must not get the old
    one's), and a new connection now and then: [(status line, dump)] per head, the dumps with
    the server's port and the connection's own (unless a proxy's header set them) as "<own>"."""
    out = []
    s = f = None

    def connect() -> None:
        nonlocal s, f
        if s is not None:
            s.close()
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        f = s.makefile("rb")

    def answer(msg: bytes) -> tuple[bytes, dict]:
        head, body = read_response(f)
        dump = json.loads(body)
        # The body the app read must be the one this message sent: "sent" if so.
        sent_body = body_of(msg)
        if dump["spawning.test.body"] == [len(sent_body), hashlib.sha1(sent_body).hexdigest()]:
            dump["spawning.test.body"] = "sent"
        for k, v in (("SERVER_PORT", str(port)), ("REMOTE_PORT", str(s.getsockname()[1]))):
            if dump.get(k) == v:
                dump[k] = "<own>"
        return head.split(b"\r\n", 1)[0], dump

    try:
        for head in sent:
            if s is None or rng.random() < 0.02:
                connect()
            times = 3 if rng.random() < 0.3 else 2
            last_apart = rng.random() < 0.05
            # The same head, and a Content-Length body the same or of the same length but not the
            # same bytes: the repeat's kept environ must not bring the last body with it.
            head_part, _, body = head.partition(b"\r\n\r\n")
            msgs = [head]
            rotate = len(body) > 1 and b"chunked" not in head_part.lower() and rng.random() < 0.5
            for k in range(1, times):
                turn = rng.randrange(1, len(body)) if rotate else 0
                msgs.append(head_part + b"\r\n\r\n" + body[turn:] + body[:turn])
            if rng.random() < 0.3:
                s.sendall(b"".join(msgs[:times - last_apart]))
                answers = [answer(msg) for msg in msgs[:times - last_apart]]
            else:
                answers = []
                for msg in msgs[:times - last_apart]:
                    s.sendall(msg)
                    answers.append(answer(msg))
            if last_apart:
                connect()
                s.sendall(msgs[-1])
                answers.append(answer(msgs[-1]))
            out.append(answers)
    finally:
        if s is not None:
            s.close()
    return out


def test_environ_space(servers: dict) -> None:
    sent = heads(SEED)
    results: dict[str, list] = {}
    errors: dict[str, BaseException] = {}

    def client(mode: str) -> None:
        try:
            # One order of connections for all four (the same seed): a difference is the head's.
            results[mode] = run_heads(servers[mode].port, sent, random.Random(SEED + 1))
        except Exception as e:   # noqa: BLE001 -- reported below, with the seed
            errors[mode] = e

    reached = space(sent)
    assert all(reached.values()), (f"seed {SEED}: the heads reach no", reached)
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(m,)) for m in MODES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    replay = f"seed {SEED} (SPAWNING_ENV_SEED={SEED} replays it)"
    assert not errors, f"{replay}: {errors}"
    assert results.keys() == MODES.keys(), f"{replay}: no answers within 120 s from {MODES.keys() - results.keys()}"
    for mode, srv in servers.items():
        assert "Traceback" not in srv.stderr, f"{replay}: {mode}: {srv.stderr[-3000:]}"
    for i, head in enumerate(sent):
        dumps = {}
        for mode in MODES:
            (status, a), *again = results[mode][i]
            assert status == b"HTTP/1.1 200 OK", (replay, i, mode, status, head[:2000])
            assert a["spawning.test.body"] == "sent", (replay, i, mode, a["spawning.test.body"], head[:2000])
            for k, (status, b) in enumerate(again, 2):
                assert (status, b) == (b"HTTP/1.1 200 OK", a), (
                    f"{replay}: head {i} on {mode} answered differently on its send {k}", head[:2000],
                    status, diff(a, b))
            # Each server on the path it is meant to test (PyPy has only the Python one).
            assert a.pop("spawning.test.fast") == (mode.endswith("-c") and C_RUNNER), (mode, a)
            dumps[mode] = a
        for other in ("thread-py", "green-c", "green-py"):
            assert dumps[other] == dumps["thread-c"], (f"{replay}: head {i}: {other} != thread-c",
                                                       head[:2000], diff(dumps["thread-c"], dumps[other]))
        # Both makers share env.c's iterator, so the rules it owns are checked against the rules.
        want = expected(head)
        got = rule_keys(dumps["thread-c"])
        if "HTTP_HOST" not in want:
            got.pop("HTTP_HOST", None)
        assert got == want, (f"{replay}: head {i}: the environ breaks a rule", head[:2000], diff(want, got))
    print(f"{len(sent)} heads x 2-3 x {len(MODES)} servers in {time.monotonic() - started:.1f} s, {replay}:",
          reached)


PROXY_NAMES = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-ssl", b"x-forwarded-host",
               b"x-forwarded-port", b"forwarded"}


def expected(raw: bytes) -> dict[str, str]:
    """What the rules make of a head, written from them and not from either maker: PEP 3333's
    keys; PATH_INFO the target's path %-decoded (RFC 3986 2.1), as latin-1; for an absolute-form
    target its path ("/" if empty, RFC 9110 4.2.3) and its authority as HTTP_HOST (RFC 9112
    3.2.2); a field's value without its OWS (RFC 9110 5.5); a name's fields joined with ", "
    (RFC 9110 5.3), "; " for Cookie (RFC 6265 5.4); Content-Length's first element; no name
    holding '_' and no Proxy (docs/options.md, httpoxy). HTTP_HOST is left out when a trusted
    proxy's header may have set it (--forwarded-host)."""
    head = raw.partition(b"\r\n\r\n")[0]
    line, *lines = head.split(b"\r\n")
    method, target, version = line.split(b" ")
    path, _, query = target.partition(b"?")
    authority = None
    if path[:1] not in (b"/", b"*"):
        rest = target.partition(b"://")[2]
        end = min([i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0], default=len(rest))
        authority, path = rest[:end], rest[end:].partition(b"?")[0] or b"/"
    elif path == b"*":
        path = b""
    decoded = bytearray()
    parts = path.split(b"%")
    decoded += parts[0]
    for part in parts[1:]:
        decoded += bytes([int(part[:2], 16)]) + part[2:]
    env = {"REQUEST_METHOD": method.decode("latin-1"), "PATH_INFO": decoded.decode("latin-1"),
           "QUERY_STRING": query.decode("latin-1"), "SERVER_PROTOCOL": version.decode(),
           "RAW_URI": target.decode("latin-1")}
    fields: dict[bytes, list[bytes]] = {}
    for f in lines:
        name, _, value = f.partition(b":")
        fields.setdefault(name.lower(), []).append(value.strip(b" \t"))
    for name, values in fields.items():
        if b"_" in name or name == b"proxy":
            continue
        value = (b"; " if name == b"cookie" else b", ").join(values)
        if name == b"content-length":
            value = value.split(b",")[0].strip(b" \t")
        key = name.decode().upper().replace("-", "_")
        env[key if name in (b"content-type", b"content-length") else "HTTP_" + key] = value.decode("latin-1")
    if authority is not None:
        env["HTTP_HOST"] = authority.decode("latin-1")
    if PROXY_NAMES & fields.keys():
        env.pop("HTTP_HOST", None)
    return env


def rule_keys(dump: dict) -> dict:
    """The dump's keys that expected() gives, HTTP_HOST when it gives it."""
    return {k: v for k, v in dump.items()
            if k.startswith(("HTTP_", "CONTENT_")) or k in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING",
                                                            "SERVER_PROTOCOL", "RAW_URI")}


def diff(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
