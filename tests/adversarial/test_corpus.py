"""A black-box corpus of hostile and malformed requests, each with the exact status a strict
HTTP/1.1 server answers (RFC 9110/9112 sections cited), sent raw to a real server. Afterwards the
app's own record of what it saw proves that nothing invalid reached it.

Every corpus target starts with ``/c-`` and every request that must be refused carries ``-bad`` in
its name, so the leak check is a plain scan of the paths the app saw. Requests whose head is valid
but whose *body* is malformed (chunked errors) do reach the app, by design: bodies stream, so the
error is found while the app reads wsgi.input, which raises; the client gets the status and the
connection is closed. Those are marked ``body``.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import start_server
from hostile import exchange, raise_nofile, responses, status_of

H = b"Host: x\r\n"


def req(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def chunked(name: str, body: bytes) -> bytes:
    return req(b"POST /echo/c-" + name.encode() + b" HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked",
               body=body)


# (name, raw request, expected status, "head" | "body": where the error is found)
CORPUS: list[tuple[str, bytes, int, str]] = [
    # ---- request line (RFC 9112 3) ----
    ("bad-method-char", req(b"G@T /c-bad-method-char HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-method-empty", req(b" /c-bad-method-empty HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-no-target", req(b"GET HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-double-space", req(b"GET  /c-bad-double-space HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-tab-separator", req(b"GET\t/c-bad-tab-separator\tHTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-trailing-space", req(b"GET /c-bad-trailing-space HTTP/1.1 ", b"Host: x"), 400, "head"),
    ("bad-three-tokens-plus", req(b"GET /c-bad-x y HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-version-lowercase", req(b"GET /c-bad-version-lowercase http/1.1", b"Host: x"), 400, "head"),
    ("bad-version-short", req(b"GET /c-bad-version-short HTTP/1", b"Host: x"), 400, "head"),
    ("bad-version-letters", req(b"GET /c-bad-version-letters HTTP/1.x", b"Host: x"), 400, "head"),
    ("bad-version-2", req(b"GET /c-bad-version-2 HTTP/2.0", b"Host: x"), 505, "head"),
    ("bad-version-0.9", req(b"GET /c-bad-version-0.9 HTTP/0.9", b"Host: x"), 505, "head"),
    ("bad-version-3", req(b"GET /c-bad-version-3 HTTP/3.1", b"Host: x"), 505, "head"),
    ("bad-no-version", b"GET /c-bad-no-version\r\n\r\n", 400, "head"),   # HTTP/0.9 simple request
    ("bad-bare-cr-line", b"GET /c-bad-bare-cr-line HTTP/1.1\rHost: x\r\n\r\n", 400, "head"),
    ("bad-nul-target", req(b"GET /c-bad-nul\x00 HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-ctl-target", req(b"GET /c-bad-ctl\x01 HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-del-target", req(b"GET /c-bad-del\x7f HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-pct-nul", req(b"GET /c-bad-pct-nul%00 HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-pct-short", req(b"GET /c-bad-pct-short% HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-pct-nonhex", req(b"GET /c-bad-pct-nonhex%zz HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-uri-too-long", req(b"GET /c-bad-" + b"u" * 9000 + b" HTTP/1.1", b"Host: x"), 414, "head"),
    # RFC 9112 3: a method longer than any implemented SHOULD get 501
    ("bad-method-too-long", req(b"A" * 9000 + b" /c-bad-method-too-long HTTP/1.1", b"Host: x"), 501, "head"),
    ("bad-binary-too-long", b"\x16\x03\x01" + b"\xff" * 9000 + b"\r\n\r\n", 400, "head"),
    # ---- header fields (RFC 9112 5, RFC 9110 5) ----
    ("bad-space-before-colon", req(b"GET /c-bad-sbc HTTP/1.1", b"Host: x", b"X-A : 1"), 400, "head"),
    ("bad-te-space-before-colon", req(b"POST /c-bad-tesbc HTTP/1.1", b"Host: x",
                                      b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400, "head"),
    ("bad-name-char", req(b"GET /c-bad-name-char HTTP/1.1", b"Host: x", b"X@Y: 1"), 400, "head"),
    ("bad-name-empty", req(b"GET /c-bad-name-empty HTTP/1.1", b"Host: x", b": 1"), 400, "head"),
    ("bad-no-colon", req(b"GET /c-bad-no-colon HTTP/1.1", b"Host: x", b"NoColonHere"), 400, "head"),
    ("bad-obs-fold", req(b"GET /c-bad-obs-fold HTTP/1.1", b"Host: x", b"X-A: 1", b" folded"), 400, "head"),
    ("bad-leading-ws-first-field", req(b"GET /c-bad-lwsff HTTP/1.1", b" Host: x"), 400, "head"),
    ("bad-nul-value", req(b"GET /c-bad-nul-value HTTP/1.1", b"Host: x", b"X-A: a\x00b"), 400, "head"),
    ("bad-cr-value", req(b"GET /c-bad-cr-value HTTP/1.1", b"Host: x", b"X-A: a\rb"), 400, "head"),
    ("bad-ctl-value", req(b"GET /c-bad-ctl-value HTTP/1.1", b"Host: x", b"X-A: a\x01b"), 400, "head"),
    ("bad-del-value", req(b"GET /c-bad-del-value HTTP/1.1", b"Host: x", b"X-A: a\x7fb"), 400, "head"),
    ("bad-nul-name", req(b"GET /c-bad-nul-name HTTP/1.1", b"Host: x", b"X-\x00A: 1"), 400, "head"),
    ("bad-lf-only-field-end", b"GET /c-bad-lf-field HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400, "head"),
    ("bad-field-too-long", req(b"GET /c-bad-field-too-long HTTP/1.1", b"Host: x", b"X-A: " + b"v" * 9000), 431, "head"),
    ("bad-too-many-fields", req(b"GET /c-bad-too-many HTTP/1.1", b"Host: x",
                                *[b"X-%d: 1" % i for i in range(120)]), 431, "head"),
    ("bad-head-too-large", req(b"GET /c-bad-head-too-large HTTP/1.1", b"Host: x",
                               *[b"X-%d: " % i + b"v" * 8000 for i in range(9)]), 431, "head"),
    # ---- Host (RFC 9112 3.2) ----
    ("bad-no-host-11", req(b"GET /c-bad-no-host-11 HTTP/1.1"), 400, "head"),
    ("bad-two-hosts", req(b"GET /c-bad-two-hosts HTTP/1.1", b"Host: a", b"Host: b"), 400, "head"),
    # ---- framing and smuggling (RFC 9112 6) ----
    ("bad-cl-and-te", req(b"POST /c-bad-cl-and-te HTTP/1.1", b"Host: x", b"Content-Length: 5",
                          b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400, "head"),
    ("bad-te-and-cl", req(b"POST /c-bad-te-and-cl HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked",
                          b"Content-Length: 5", body=b"0\r\n\r\n"), 400, "head"),
    ("bad-cl-conflict", req(b"POST /c-bad-cl-conflict HTTP/1.1", b"Host: x", b"Content-Length: 1",
                            b"Content-Length: 2", body=b"ab"), 400, "head"),
    ("bad-cl-list-conflict", req(b"POST /c-bad-cl-lc HTTP/1.1", b"Host: x", b"Content-Length: 1, 2",
                                 body=b"ab"), 400, "head"),
    ("bad-cl-negative", req(b"POST /c-bad-cl-negative HTTP/1.1", b"Host: x", b"Content-Length: -1"), 400, "head"),
    ("bad-cl-plus", req(b"POST /c-bad-cl-plus HTTP/1.1", b"Host: x", b"Content-Length: +5", body=b"hello"), 400, "head"),
    ("bad-cl-hex", req(b"POST /c-bad-cl-hex HTTP/1.1", b"Host: x", b"Content-Length: 0x5", body=b"hello"), 400, "head"),
    ("bad-cl-space-inside", req(b"POST /c-bad-cl-si HTTP/1.1", b"Host: x", b"Content-Length: 1 0"), 400, "head"),
    ("bad-cl-empty", req(b"POST /c-bad-cl-empty HTTP/1.1", b"Host: x", b"Content-Length:"), 400, "head"),
    ("bad-cl-overflow", req(b"POST /c-bad-cl-overflow HTTP/1.1", b"Host: x",
                            b"Content-Length: 99999999999999999999999"), 400, "head"),
    ("bad-cl-over-max-body", req(b"POST /c-bad-cl-over-max HTTP/1.1", b"Host: x",
                                 b"Content-Length: 2000000000"), 413, "head"),
    ("bad-te-http10", req(b"POST /c-bad-te-http10 HTTP/1.0", b"Transfer-Encoding: chunked",
                          body=b"0\r\n\r\n"), 400, "head"),
    ("bad-te-not-last", req(b"POST /c-bad-te-not-last HTTP/1.1", b"Host: x",
                            b"Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n"), 400, "head"),
    ("bad-te-chunked-twice", req(b"POST /c-bad-te-twice HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked",
                                 b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400, "head"),
    ("bad-te-unknown", req(b"POST /c-bad-te-unknown HTTP/1.1", b"Host: x", b"Transfer-Encoding: xchunked",
                           body=b"0\r\n\r\n"), 501, "head"),
    ("bad-te-gzip-chunked", req(b"POST /c-bad-te-gzip HTTP/1.1", b"Host: x",
                                b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501, "head"),
    ("bad-te-vtab", req(b"POST /c-bad-te-vtab HTTP/1.1", b"Host: x", b"Transfer-Encoding: \x0bchunked",
                        body=b"0\r\n\r\n"), 400, "head"),
    ("bad-te-empty", req(b"POST /c-bad-te-empty HTTP/1.1", b"Host: x", b"Transfer-Encoding:",
                         body=b"0\r\n\r\n"), 400, "head"),
    # ---- chunked bodies (RFC 9112 7.1): found while the app reads ----
    ("bad-chunk-size-nonhex", chunked("bad-chunk-nonhex", b"zz\r\nhello\r\n0\r\n\r\n"), 400, "body"),
    ("bad-chunk-size-0x", chunked("bad-chunk-0x", b"0x5\r\nhello\r\n0\r\n\r\n"), 400, "body"),
    ("bad-chunk-size-negative", chunked("bad-chunk-neg", b"-5\r\nhello\r\n0\r\n\r\n"), 400, "body"),
    ("bad-chunk-size-overflow", chunked("bad-chunk-ovf", b"1" + b"0" * 17 + b"\r\nhello\r\n0\r\n\r\n"), 400, "body"),
    ("bad-chunk-size-empty", chunked("bad-chunk-empty", b"\r\nhello\r\n0\r\n\r\n"), 400, "body"),
    ("bad-chunk-size-space", chunked("bad-chunk-space", b"5 5\r\nhello\r\n0\r\n\r\n"), 400, "body"),
    ("bad-chunk-no-crlf-after-data", chunked("bad-chunk-nocrlf", b"5\r\nhelloXX0\r\n\r\n"), 400, "body"),
    ("bad-chunk-lf-only", chunked("bad-chunk-lf", b"5\nhello\n0\n\n"), 400, "body"),
    ("bad-chunk-bare-cr-ext", chunked("bad-chunk-crext", b"5;a\rb\r\nhello\r\n0\r\n\r\n"), 400, "body"),
    ("bad-chunk-ext-too-long", chunked("bad-chunk-ext", b"5;e=" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n"), 400, "body"),
    ("bad-chunk-too-many-zeros", chunked("bad-chunk-zeros", b"0" * 100 + b"5\r\nhello\r\n0\r\n\r\n"), 400, "body"),
    ("bad-chunk-trailer-bad-field", chunked("bad-chunk-trailer", b"5\r\nhello\r\n0\r\nbad field\r\n\r\n"), 400, "body"),
    # ---- valid oddities: served, so the app must see them ----
    ("ok-absolute-form", req(b"GET http://x/c-ok-absolute-form HTTP/1.1", b"Host: x"), 200, "head"),
    ("ok-leading-crlf", b"\r\n\r\n" + req(b"GET /c-ok-leading-crlf HTTP/1.1", b"Host: x"), 200, "head"),
    ("ok-http10-no-host", req(b"GET /c-ok-http10-no-host HTTP/1.0"), 200, "head"),
    ("ok-tab-in-value", req(b"GET /c-ok-tab-in-value HTTP/1.1", b"Host: x", b"X-A: a\tb"), 200, "head"),
    ("ok-obs-text-value", req(b"GET /c-ok-obs-text HTTP/1.1", b"Host: x", b"X-A: caf\xe9"), 200, "head"),
    ("ok-te-case", req(b"POST /echo/c-ok-te-case HTTP/1.1", b"Host: x", b"Transfer-Encoding: ChUnKeD",
                       body=b"5\r\nhello\r\n0\r\n\r\n"), 200, "head"),
    ("ok-cl-leading-zeros", req(b"POST /echo/c-ok-cl-zeros HTTP/1.1", b"Host: x", b"Content-Length: 005",
                                body=b"hello"), 200, "head"),
    ("ok-cl-same-twice", req(b"POST /echo/c-ok-cl-twice HTTP/1.1", b"Host: x", b"Content-Length: 5",
                             b"Content-Length: 5", body=b"hello"), 200, "head"),
    ("ok-chunk-ext-and-trailer", chunked("ok-chunk-ext", b"5;a=b;c\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), 200, "head"),
    ("ok-chunk-upper-hex", chunked("ok-chunk-hex", b"A\r\nhellohello\r\n0\r\n\r\n"), 200, "head"),
    ("ok-pct-encoded-slash", req(b"GET /c-ok-pct%2Fslash HTTP/1.1", b"Host: x"), 200, "head"),
    # RFC 9110 2.5: a higher minor version of a major version we implement is served as 1.1.
    ("ok-higher-minor-version", req(b"GET /c-ok-minor HTTP/1.2", b"Host: x"), 200, "head"),
    ("ok-cl-list-same", req(b"POST /echo/c-ok-cl-list HTTP/1.1", b"Host: x", b"Content-Length: 5, 5",
                            body=b"hello"), 200, "head"),   # RFC 9110 8.6 allows it
    ("ok-cl-ows", req(b"POST /echo/c-ok-cl-ows HTTP/1.1", b"Host: x", b"Content-Length:  5 ",
                      body=b"hello"), 200, "head"),
    ("ok-te-trailing-ows", req(b"POST /echo/c-ok-te-ows HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked ",
                               body=b"5\r\nhello\r\n0\r\n\r\n"), 200, "head"),
    ("ok-expect-unknown", req(b"GET /c-ok-expect HTTP/1.1", b"Host: x", b"Expect: foo"), 200, "head"),  # 417 is a MAY
    ("ok-empty-host", req(b"GET /c-ok-empty-host HTTP/1.1", b"Host:"), 200, "head"),   # RFC 9112 3.2
    ("ok-lowercase-method", req(b"get /c-ok-lower HTTP/1.1", b"Host: x"), 200, "head"),  # a valid token
    ("ok-upgrade-ignored", req(b"GET /c-ok-upgrade HTTP/1.1", b"Host: x", b"Connection: Upgrade",
                               b"Upgrade: h2c"), 200, "head"),   # we never switch protocols
    # ---- more refusals ----
    ("bad-asterisk-get", req(b"GET * HTTP/1.1", b"Host: x"), 400, "head"),   # '*' is for OPTIONS only
    ("bad-fragment", req(b"GET /c-bad-fragment#f HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-host-space", req(b"GET /c-bad-host-space HTTP/1.1", b"Host: a b"), 400, "head"),
    # RFC 9110 7.2 / RFC 3986 3.2.2-3.2.3: Host = uri-host [ ":" port ], no userinfo
    ("bad-host-port-letters", req(b"GET /c-bad-host-pl HTTP/1.1", b"Host: a:b"), 400, "head"),
    ("bad-host-two-ports", req(b"GET /c-bad-host-2p HTTP/1.1", b"Host: a:80:90"), 400, "head"),
    ("bad-host-open-bracket", req(b"GET /c-bad-host-ob HTTP/1.1", b"Host: [::1"), 400, "head"),
    ("bad-host-bracket-late", req(b"GET /c-bad-host-bl HTTP/1.1", b"Host: a[::1]"), 400, "head"),
    ("bad-host-userinfo", req(b"GET /c-bad-host-ui HTTP/1.1", b"Host: u@a"), 400, "head"),
    ("ok-host-ipv6-port", req(b"GET /c-ok-host-v6 HTTP/1.1", b"Host: [::1]:8080"), 200, "head"),
    ("ok-host-port", req(b"GET /c-ok-host-port HTTP/1.1", b"Host: a.example:80"), 200, "head"),
    # RFC 9112 3.2.2: the authority of an absolute-form target stands in for Host
    ("bad-absolute-userinfo", req(b"GET http://u@a/c-bad-abs-ui HTTP/1.1", b"Host: a"), 400, "head"),
    ("bad-absolute-port", req(b"GET http://a:b/c-bad-abs-port HTTP/1.1", b"Host: a"), 400, "head"),
    ("ok-absolute-form", req(b"GET http://a.example:80/c-ok-absolute HTTP/1.1", b"Host: b"), 200, "head"),
    ("bad-host-tab-before-colon", req(b"GET /c-bad-htbc HTTP/1.1", b"Host\t: x"), 400, "head"),
    ("bad-lf-only-line-ends", b"GET /c-bad-lf-only HTTP/1.1\nHost: x\n\n", 400, "head"),  # strict, RFC 9112 2.2
    ("bad-nul-first", b"\x00" + req(b"GET /c-bad-nul-first HTTP/1.1", b"Host: x"), 400, "head"),
    ("bad-h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "head"),
    ("bad-te-identity", req(b"POST /c-bad-te-identity HTTP/1.1", b"Host: x", b"Transfer-Encoding: identity",
                            body=b"0\r\n\r\n"), 501, "head"),
    # RFC 9112 7.1.1: extensions are name[=token / quoted-string], with BWS only around ; and =
    ("bad-chunk-ext-value-space", chunked("bad-chunk-evs", b"5;a=b c\r\nhello\r\n0\r\n\r\n"), 400, "body"),
    ("bad-chunk-ext-no-name", chunked("bad-chunk-enn", b"5;=b\r\nhello\r\n0\r\n\r\n"), 400, "body"),
    ("ok-chunk-ext-quoted", chunked("ok-chunk-eq", b'5;a="x;y" ; b = c\r\nhello\r\n0\r\n\r\n'), 200, "head"),
    ("bad-chunk-ext-quoted-crlf", chunked("bad-chunk-qcrlf", b'5;a="b\r\nc"\r\nhello\r\n0\r\n\r\n'), 400, "body"),
]


@pytest.fixture(scope="module")
def server():
    raise_nofile()
    proc = start_server("-s", "1", "-t", "4", "--header-timeout", "2", "--max-body-size", "1000000000",
                        "core_app.application")
    yield proc
    proc.stop()


@pytest.mark.parametrize("name,data,status,where", CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus(server, name, data, status, where):
    """Sent whole, then (for head errors) split byte-wise in three writes: the same answer."""
    resp = exchange(server.port, data, timeout=5, shut_wr=status < 400)
    assert status_of(resp) == status, resp[:400]
    head = resp.partition(b"\r\n\r\n")[0] + b"\r\n"
    if status >= 400:
        assert b"\r\nConnection: close\r\n" in head, head
        assert len(responses(resp)) == 1, resp[:400]
        if where == "head":   # our own error page: no echo of the input, no app output
            assert resp.endswith(b"\r\n\r\n" + resp.partition(b"\r\n\r\n")[2])
            assert b"c-bad" not in resp
    if where == "head" and len(data) > 3:
        third = len(data) // 3
        pieces = [data[:third], data[third:2 * third], data[2 * third:]]
        resp2 = exchange(server.port, pieces, pause=0.02, timeout=5, shut_wr=status < 400)
        assert status_of(resp2) == status, resp2[:400]


def test_request_after_a_bad_one_is_never_run(server):
    """Smuggling: after a refused head, whatever follows on the connection is discarded, never
    parsed as a request (RFC 9112 11.2)."""
    data = (req(b"GET /c-bad-first HTTP/1.1", b"Host: x", b"X-A : 1")
            + req(b"GET /c-bad-smuggled HTTP/1.1", b"Host: x"))
    resp = exchange(server.port, data)
    assert responses(resp) == [400]


def test_te_cl_smuggling_body_is_not_a_request(server):
    """A chunked body whose bytes look like a request stays body: the 'inner request' never runs."""
    inner = b"GET /c-bad-inner HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n"
    data = req(b"POST /echo/c-ok-te-carrier HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked", body=body)
    resp = exchange(server.port, data, shut_wr=True)
    assert responses(resp) == [200]
    assert resp.endswith(inner)


def test_nothing_invalid_reached_the_app(server):
    for name, data, _, _ in CORPUS:   # (again, so the check holds on its own)
        exchange(server.port, data, timeout=5, shut_wr=True)
    resp = exchange(server.port, b"GET /seen HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    seen = json.loads(resp.partition(b"\r\n\r\n")[2])
    body_errors = {f"/echo/c-{n}" for n in ("bad-chunk-nonhex", "bad-chunk-0x", "bad-chunk-neg",
                                            "bad-chunk-ovf", "bad-chunk-empty", "bad-chunk-space",
                                            "bad-chunk-nocrlf", "bad-chunk-lf", "bad-chunk-crext",
                                            "bad-chunk-ext", "bad-chunk-zeros", "bad-chunk-trailer",
                                            "bad-chunk-qcrlf", "bad-chunk-evs", "bad-chunk-enn")}
    leaked = [p for p in seen if re.search(r"/c-bad", p) and p not in body_errors]
    assert leaked == []
    assert any("/c-ok-" in p for p in seen)   # the valid oddities did get through
