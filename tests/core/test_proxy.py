"""The PROXY protocol (csrc/http/proxy.c, wired into csrc/conn/input.c): ``--proxy-protocol`` and
``--bind proxy://ADDRESS``, through real sockets.

A balancer's preamble (v1 text or v2 binary) opens the connection and names the client, which the
app sees as REMOTE_ADDR/REMOTE_PORT; a LOCAL command (health check), UNKNOWN or UNSPEC keeps the
connection's own address. A connection that does not start with a valid preamble is closed
without an answer. The parser's own vectors run under ASan in tests/c/test_proxy.c (built and run
here too), and its fuzzer in tests/test_fuzz_smoke.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port, read_response
from spawning._core import ffi, lib

APP = "core_app.env_app"
ROOT = Path(__file__).resolve().parents[2]
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
C_PATH_BUILT = lib.sp_py_setup() == 0
PATHS = [
    pytest.param({"SPAWNING_NO_PYFAST": ""}, id="c", marks=pytest.mark.skipif(
        not C_PATH_BUILT, reason="this build has no C path")),
    pytest.param({"SPAWNING_NO_PYFAST": "1"}, id="python"),
]


def v2(src: str, sport: int, dst: str = "127.0.0.1", dport: int = 80, command: int = 1,
       tlvs: bytes = b"") -> bytes:
    """A v2 preamble for a TCP connection from src:sport."""
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    addrs = (socket.inet_pton(family, src) + socket.inet_pton(family, dst if family == socket.AF_INET
                                                                 else "::1")
             + struct.pack("!HH", sport, dport))
    body = addrs + tlvs
    fam = 0x11 if family == socket.AF_INET else 0x21
    return V2_SIG + bytes([0x20 | command, fam]) + struct.pack("!H", len(body)) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


REQUEST = b"GET /p HTTP/1.1\r\nHost: app.test\r\n\r\n"


def read_json(f) -> dict | None:
    """One response's JSON body, or None when the connection closed first."""
    try:
        head, body = read_response(f)
    except ConnectionError:
        return None
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


def talk(port: int, preamble: bytes, requests: int = 2, bytewise: bool = False) -> list[dict]:
    """Sends the preamble and `requests` keep-alive requests (each after the previous answer);
    returns the environs. bytewise: the preamble and the first request go one byte per write."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = c.makefile("rb")
        first = preamble + REQUEST
        if bytewise:
            for i in range(len(first)):
                c.sendall(first[i:i + 1])
                time.sleep(0.001)
        else:
            c.sendall(first)
        for i in range(requests):
            if i:
                c.sendall(REQUEST)
            env = read_json(f)
            assert env is not None, "closed without an answer"
            out.append(env)
    return out


def closed_unanswered(port: int, data: bytes, timeout: float = 5.0) -> bool:
    """Whether the server closes the connection after data without sending a byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(data)
        try:
            return c.recv(4096) == b""
        except ConnectionResetError:
            return True


@pytest.fixture(params=PATHS)
def path_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return request.param


@pytest.mark.parametrize("mode", [("-t", "2"), ("-t", "0")], ids=["threads", "green"])
def test_preambles_set_the_client_address(spawn, path_env, mode):
    server = spawn(APP, "-s", "1", *mode, "--proxy-protocol", env=path_env)
    port = server.port
    cases = [
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n", "192.0.2.1", "56324"),
        (b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 8080\r\n", "2001:db8::1", "4711"),
        (b"PROXY TCP6 2001:0DB8:0:0:0:0:0:0001 ::1 1 2\r\n", "2001:db8::1", "1"),   # canonical text
        (v2("203.0.113.5", 40000), "203.0.113.5", "40000"),
        (v2("2001:db8::77", 65535), "2001:db8::77", "65535"),
        (v2("10.1.2.3", 5, tlvs=tlv(0x01, b"h2") + tlv(0xEA, b"\x01vpce-0123456789abcdef")
            + tlv(0x04, b"\x00" * 100)), "10.1.2.3", "5"),
    ]
    for preamble, addr, rport in cases:
        envs = talk(port, preamble)
        for env in envs:   # the first request, and the connection's repeat
            assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (addr, rport), preamble
    # The connection's own address: UNKNOWN (v1), LOCAL and UNSPEC (v2).
    for preamble in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n",
                     V2_SIG + b"\x20\x00\x00\x00", V2_SIG + b"\x21\x00\x00\x00",
                     v2("192.0.2.99", 7, command=0)):
        env = talk(port, preamble, requests=1)[0]
        assert env["REMOTE_ADDR"] == "127.0.0.1", preamble
        assert env["REMOTE_PORT"] != "7"


def test_preamble_byte_by_byte(spawn, path_env):
    server = spawn(APP, "-s", "1", "-t", "2", "--proxy-protocol", env=path_env)
    env = talk(server.port, b"PROXY TCP4 192.0.2.10 192.0.2.20 1234 80\r\n", bytewise=True)[0]
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.10", "1234")
    env = talk(server.port, v2("192.0.2.11", 4321, tlvs=tlv(0x05, b"unique-id")), bytewise=True)[0]
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.11", "4321")


def test_without_a_valid_preamble_the_connection_is_closed(spawn):
    server = spawn(APP, "-s", "1", "-t", "2", "--proxy-protocol")
    pids = server.workers()
    bad = [
        REQUEST,                                                     # plain HTTP
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n" + REQUEST,           # bare LF
        b"PROXY TCP4 localhost 192.0.2.2 1 2\r\n" + REQUEST,
        b"PROXY TCP4 192.0.2.1 192.0.2.2 70000 2\r\n" + REQUEST,
        b"PROXY " + b"x" * 200,                                      # no CRLF within 107 bytes
        V2_SIG + b"\x21\x11\xff\xff" + b"\x00" * 100,                # declares 64 KiB
        V2_SIG + b"\x21\x11\x00\x10" + b"\x00" * 12 + b"\x01\x00\x09x" + REQUEST,   # TLV overruns
        V2_SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12 + REQUEST,       # version 3
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(64),   # a TLS ClientHello
        os.urandom(64).replace(b"P", b"Q").replace(b"\r", b"\n"),
    ]
    for data in bad:
        assert closed_unanswered(server.port, data), data[:40]
    # A preamble is only ever the start of a connection: a second one is an (invalid) request.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
        c.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n" + REQUEST)
        f = c.makefile("rb")
        assert read_json(f)["REMOTE_ADDR"] == "192.0.2.1"
        c.sendall(b"PROXY TCP4 192.0.2.66 192.0.2.2 1 2\r\n" + REQUEST)
        assert f.readline().startswith(b"HTTP/1.1 400")
    assert server.workers() == pids
    # Served normally afterwards.
    assert talk(server.port, b"PROXY UNKNOWN\r\n", requests=1)[0]["REMOTE_ADDR"] == "127.0.0.1"


def test_unfinished_preamble_is_closed_after_the_header_timeout(spawn):
    """A preamble that stops half-way gets no answer either (as a bad one), after
    --header-timeout; a complete preamble followed by a stalled head gets the usual 408."""
    server = spawn(APP, "-s", "1", "-t", "2", "--proxy-protocol", "--header-timeout", "1",
                   "--defer-accept", "0")
    for sent, answer in ((b"PROXY TCP4 192.0.2.1", b""),
                         (V2_SIG + b"\x21\x11\x00\x0c\x0a", b""),
                         (b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\n", b"HTTP/1.1 408")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
            c.sendall(sent)
            start = time.monotonic()
            data = b""
            while True:
                more = c.recv(4096)
                if not more:
                    break
                data += more
            took = time.monotonic() - start
        assert 0.9 < took < 2.5, (sent, took)
        assert data.startswith(answer) and (answer or data == b""), (sent, data[:40])


def test_per_listener_bind_syntax(spawn, path_env):
    plain, proxied = free_port(), free_port()
    server = spawn(APP, "-s", "1", "-t", "2", "-b", f"127.0.0.1:{plain}", "-b",
                   f"proxy://127.0.0.1:{proxied}", env=path_env)
    assert closed_unanswered(proxied, REQUEST)
    env = talk(proxied, b"PROXY TCP4 192.0.2.5 192.0.2.6 99 80\r\n")[0]
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.5", "99")
    env = talk(plain, b"")[0]
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    # On the plain listener a preamble is just a bad request.
    with socket.create_connection(("127.0.0.1", plain), timeout=5) as c:
        c.sendall(b"PROXY TCP4 192.0.2.5 192.0.2.6 99 80\r\n" + REQUEST)
        assert c.recv(4096).startswith(b"HTTP/1.1 400")
    assert server.port   # (the fixture's -p port is replaced by --bind)


def test_proxy_protocol_and_forwarded_headers_together(spawn, path_env):
    """The PROXY address is the peer the forwarded rules judge: a client named by the preamble is
    not a trusted proxy, so its X-Forwarded-For is not believed; a balancer on 127.0.0.1 is."""
    server = spawn(APP, "-s", "1", "-t", "2", "--proxy-protocol", env=path_env)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
        c.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"
                  b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
        env = read_json(c.makefile("rb"))
    assert env["REMOTE_ADDR"] == "192.0.2.1"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
        c.sendall(b"PROXY TCP4 127.0.0.1 192.0.2.2 1 2\r\n"
                  b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.3\r\n\r\n")
        env = read_json(c.makefile("rb"))
    assert env["REMOTE_ADDR"] == "198.51.100.3"


def test_bind_syntax_is_checked():
    from spawning.config import Settings
    from spawning.config.addresses import parse_address, proxy_listeners
    from spawning.errors import ConfigError
    a = parse_address("proxy://[::1]:8000")
    assert (a.kind, a.host, a.port, a.proxy, str(a)) == ("tcp", "::1", 8000, True, "proxy://[::1]:8000")
    assert parse_address("proxy://unix:/run/app.sock").proxy
    with pytest.raises(ConfigError):
        parse_address("proxy://proxy://:80")
    with pytest.raises(ConfigError):
        parse_address("proxy://")
    cfg = Settings.from_config(bind=["127.0.0.1:1", "proxy://127.0.0.1:2", "proxy://unix:/x"])
    assert proxy_listeners(cfg, 3) == 0b110
    assert proxy_listeners(cfg.replace(proxy_protocol=True), 3) == 0b111
    assert proxy_listeners(Settings(proxy_protocol=False), 1) == 0


def test_parser_through_cffi():
    """A few vectors through the module's own build (the C tests build their own)."""
    out = ffi.new("sp_proxy_addr *")
    data = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET"
    assert lib.sp_parse_proxy(data, len(data), out) == len(data) - 3
    assert (out.version, out.family, bytes(out.src[0:4]), out.src_port) == \
        (1, lib.SP_PROXY_INET, socket.inet_aton("192.0.2.1"), 56324)
    data = v2("2001:db8::1", 80)
    assert lib.sp_parse_proxy(data, len(data), out) == len(data)
    assert out.family == lib.SP_PROXY_INET6
    assert bytes(out.src) == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    for k in range(len(data)):
        assert lib.sp_parse_proxy(data[:k], k, out) == lib.SP_PARTIAL
    assert lib.sp_parse_proxy(b"GET / ", 6, out) == -400


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


@pytest.mark.skipif(_compiler() is None, reason="needs a C compiler")
def test_c_vectors_under_asan(tmp_path):
    """tests/c/test_proxy.c: every vector whole and byte by byte against a guard page, ASan/UBSan."""
    cc = _compiler()
    exe = tmp_path / "test_proxy"
    cmd = [cc, "-std=c99", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'http'}", "-o", str(exe),
           str(ROOT / "tests" / "c" / "test_proxy.c"), str(ROOT / "csrc" / "http" / "proxy.c")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and "sanitize" in proc.stderr and "cannot find" in proc.stderr:
        pytest.skip(f"{cc} has no sanitizer runtime")
    assert proc.returncode == 0, proc.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 failures" in run.stdout
