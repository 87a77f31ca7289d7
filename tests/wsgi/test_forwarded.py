"""Proxy headers (spawning/wsgi/forwarded.py): X-Forwarded-For/-Proto/-Ssl/-Host/-Port and RFC 7239
Forwarded, believed from --forwarded-allow-ips peers only.

Through real servers and raw sockets, on both request paths: the C path (csrc/py/runner.c, the
default) and the Python path (SPAWNING_NO_PYFAST=1 in the server's environment), each with a
first request (a template built) and its keep-alive repeats (the connection's kept environ), since
the two paths make those differently. The header parsing itself is also checked directly on
environ dicts, where many malformed forms are cheap to list.
"""

from __future__ import annotations

import json
import socket

import pytest
from conftest import read_response
from spawning._core import lib

from spawning.wsgi.forwarded import ProxyTrust, parse_forwarded

C_PATH_BUILT = lib.sp_py_setup() == 0
# The value "" overrides a SPAWNING_NO_PYFAST the test run itself may have in its environment.
PATHS = [
    pytest.param({"SPAWNING_NO_PYFAST": ""}, id="c", marks=pytest.mark.skipif(
        not C_PATH_BUILT, reason="this build has no C path (SPAWNING_NO_PYFAST at build time)")),
    pytest.param({"SPAWNING_NO_PYFAST": "1"}, id="python"),
]
APP = "core_app.env_app"


def exchange(port: int, heads: list[bytes], timeout: float = 5.0) -> list[dict]:
    """Sends each head as one request on a single keep-alive connection (the last closes it) and
    returns the environ each got (env_app answers with it as JSON)."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        f = c.makefile("rb")
        for i, extra in enumerate(heads):
            last = i == len(heads) - 1
            c.sendall(b"GET /e HTTP/1.1\r\nHost: app.test\r\n" + extra
                      + (b"Connection: close\r\n" if last else b"") + b"\r\n")
            head, body = read_response(f)
            assert head.startswith(b"HTTP/1.1 200"), head
            out.append(json.loads(body))
    return out


def env_of(port: int, extra: bytes = b"", repeats: int = 3) -> dict:
    """The environ of a request sent `repeats` times on one connection: the first builds a
    template, the next are the connection's repeats; every copy must agree."""
    envs = exchange(port, [extra] * repeats)
    envs[-1].pop("HTTP_CONNECTION")     # the last one's "close"
    for e in envs[1:]:
        assert e == envs[0]
    return envs[0]


@pytest.fixture(params=PATHS)
def path_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return request.param


# ---- trusted peer (127.0.0.1 is in the default --forwarded-allow-ips) ------------------------------


@pytest.mark.parametrize("mode", [("-t", "2"), ("-t", "0")], ids=["threads", "green"])
def test_trusted_peer_xff_chain_and_proto(spawn, path_env, mode):
    server = spawn(APP, "-s", "1", *mode, "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8",
                   env=path_env)
    # The rightmost entry that is not a trusted proxy is the client; whatever it claimed to its
    # left (here a spoofed 1.1.1.1) is not believed.
    env = env_of(server.port, b"X-Forwarded-For: 1.1.1.1, 203.0.113.9, 10.2.3.4\r\n"
                              b"X-Forwarded-Proto: https\r\n")
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_X_FORWARDED_FOR"] == "1.1.1.1, 203.0.113.9, 10.2.3.4"   # still there
    assert env["REMOTE_PORT"].isdigit()          # the peer's port (no client port was given)
    assert env["SERVER_SOFTWARE"].startswith("spawning/")
    # Every entry trusted: the leftmost is the client.
    assert env_of(server.port, b"X-Forwarded-For: 10.9.9.9, 10.2.3.4\r\n")["REMOTE_ADDR"] == "10.9.9.9"
    # No proxy headers: the peer, plain http.
    env = env_of(server.port)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"


def test_default_allow_list_and_ssl_header(spawn, path_env):
    server = spawn(APP, "-s", "1", "-t", "2", env=path_env)
    env = env_of(server.port, b"X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Ssl: on\r\n")
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("198.51.100.7", "https")
    # The nearest proxy's word (the rightmost value) counts.
    env = env_of(server.port, b"X-Forwarded-Proto: https, http\r\n")
    assert env["wsgi.url_scheme"] == "http"
    # Only http and https are schemes.
    assert env_of(server.port, b"X-Forwarded-Proto: javascript\r\n")["wsgi.url_scheme"] == "http"
    # An IPv6 client, with a port as some balancers append it: REMOTE_PORT is the client's.
    env = env_of(server.port, b"X-Forwarded-For: [2001:db8::5]:4433\r\n")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::5", "4433")
    env = env_of(server.port, b"X-Forwarded-For: 192.0.2.8:1234\r\n")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.8", "1234")


def test_forwarded_rfc7239_forms(spawn, path_env):
    server = spawn(APP, "-s", "1", "-t", "2", env=path_env)
    env = env_of(server.port, b"Forwarded: for=192.0.2.60;proto=https;by=203.0.113.43\r\n")
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("192.0.2.60", "https")
    # Quoted IPv6 with a port, case-insensitive names, several elements in one header and over
    # two header lines (joined with ", " by the core).
    env = env_of(server.port, b'Forwarded: For="[2001:db8:cafe::17]:4711"; PROTO=https\r\n')
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["wsgi.url_scheme"]) == \
        ("2001:db8:cafe::17", "4711", "https")
    env = env_of(server.port, b"Forwarded: for=198.51.100.1, for=192.0.2.43;proto=https\r\n"
                              b"Forwarded: for=127.0.0.1\r\n")
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("192.0.2.43", "https")
    # Forwarded wins over X-Forwarded-For when it names the client.
    env = env_of(server.port, b"Forwarded: for=192.0.2.1\r\nX-Forwarded-For: 192.0.2.2\r\n")
    assert env["REMOTE_ADDR"] == "192.0.2.1"
    # An obfuscated identifier or "unknown" where the client would be: the peer is kept.
    for value in (b"for=_hidden", b"for=unknown", b'for="_gazonk";proto=https'):
        env = env_of(server.port, b"Forwarded: " + value + b"\r\n")
        assert env["REMOTE_ADDR"] == "127.0.0.1", value


def test_untrusted_peer_headers_pass_through(spawn, path_env):
    server = spawn(APP, "-s", "1", "-t", "2", "--forwarded-allow-ips", "10.0.0.1", "--forwarded-host",
                   env=path_env)
    heads = (b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: on\r\n"
             b"X-Forwarded-Host: evil.test\r\nX-Forwarded-Port: 443\r\n"
             b'Forwarded: for="[2001:db8::1]:1";proto=https;host=evil.test\r\n')
    env = env_of(server.port, heads)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTP_HOST"] == "app.test"
    assert env["SERVER_PORT"] == str(server.port)
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.9"
    assert env["HTTP_X_FORWARDED_PROTO"] == "https"
    assert env["HTTP_X_FORWARDED_HOST"] == "evil.test"
    assert env["HTTP_FORWARDED"] == 'for="[2001:db8::1]:1";proto=https;host=evil.test'


def test_forwarded_host_only_when_enabled(spawn, path_env):
    heads = b"X-Forwarded-Host: www.example.com\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Proto: https\r\n"
    off = spawn(APP, "-s", "1", "-t", "2", env=path_env)
    env = env_of(off.port, heads)
    assert (env["HTTP_HOST"], env["SERVER_PORT"]) == ("app.test", str(off.port))
    assert env["wsgi.url_scheme"] == "https"
    on = spawn(APP, "-s", "1", "-t", "2", "--forwarded-host", env=path_env)
    env = env_of(on.port, heads)
    assert (env["HTTP_HOST"], env["SERVER_PORT"]) == ("www.example.com", "443")
    env = env_of(on.port, b"Forwarded: host=shop.example;proto=https\r\n")
    assert (env["HTTP_HOST"], env["wsgi.url_scheme"]) == ("shop.example", "https")
    # A host that is no host name is ignored.
    assert env_of(on.port, b"X-Forwarded-Host: a b/c\r\n")["HTTP_HOST"] == "app.test"


def test_malformed_values_keep_the_peer_and_the_worker(spawn, path_env):
    server = spawn(APP, "-s", "1", "-t", "2", env=path_env)
    pids = server.workers()
    bad = [
        b"X-Forwarded-For: garbage\r\n",
        b"X-Forwarded-For: , , ,\r\n",
        b"X-Forwarded-For: 203.0.113.9:99999\r\n",
        b"X-Forwarded-For: 999.1.1.1\r\n",
        b"X-Forwarded-For: [::1\r\n",
        b"X-Forwarded-For: " + b"1" * 4000 + b"\r\n",
        b"X-Forwarded-For: junk, " + b"127.0.0.1, " * 300 + b"127.0.0.1\r\n",
        b'Forwarded: for="unterminated\r\n',
        b"Forwarded: for=192.0.2.1;for=192.0.2.2\r\n",
        b"Forwarded: for=192.0.2.1:80\r\n",          # a port must be quoted (RFC 7239 6)
        b"Forwarded: ;;;,,=\r\n",
        b"Forwarded: for=\"[2001:db8::1\"\r\n",
        b"Forwarded: for=\xff\xfe\r\n",
        b"X-Forwarded-Proto: \xff\r\nX-Forwarded-Ssl: \x80\r\n",
    ]
    for extra in bad:
        env = env_of(server.port, extra, repeats=2)
        assert env["REMOTE_ADDR"] == "127.0.0.1", extra
        assert env["wsgi.url_scheme"] == "http", extra
    assert server.workers() == pids     # nothing crashed a worker


def test_underscore_names_cannot_impersonate(spawn, path_env):
    server = spawn(APP, "-s", "1", "-t", "2", env=path_env)
    env = env_of(server.port, b"X_Forwarded_For: 203.0.113.9\r\nX-Forwarded_Proto: https\r\n")
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"
    assert "HTTP_X_FORWARDED_FOR" not in env and "HTTP_X_FORWARDED_PROTO" not in env


def test_server_header_and_software(spawn):
    server = spawn(APP, "-s", "1", "-t", "2")
    status, headers, _ = server.get("/")
    assert status == 200 and headers.get("server") == "spawning"
    quiet = spawn(APP, "-s", "1", "-t", "2", "--no-server-header")
    status, headers, body = quiet.get("/")
    assert status == 200 and "server" not in headers
    import spawning
    assert json.loads(body)["SERVER_SOFTWARE"] == f"spawning/{spawning.__version__}"
    # The core's own answers (a 400 here) carry no Server header either.
    with socket.create_connection(("127.0.0.1", quiet.port), timeout=5) as c:
        c.sendall(b"BAD\r\n\r\n")
        answer = c.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") and b"\r\nServer:" not in answer


# ---- the header logic on environ dicts ---------------------------------------------------------------


def apply(headers: dict[str, str], peer: str = "127.0.0.1", allow: str = "127.0.0.1,::1",
          host: bool = False) -> tuple[dict, str | None]:
    env = {"REMOTE_ADDR": peer, "wsgi.url_scheme": "http", "HTTP_HOST": "app.test",
           "SERVER_PORT": "8080", **headers}
    port = ProxyTrust(allow, host).apply(env)
    return env, port


@pytest.mark.parametrize("value, expected", [
    ("for=192.0.2.60;proto=http;by=203.0.113.43",
     [{"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}]),
    ('for="_gazonk"', [{"for": "_gazonk"}]),
    ('For="[2001:db8:cafe::17]:4711"', [{"for": "[2001:db8:cafe::17]:4711"}]),
    ("for=192.0.2.43, for=198.51.100.17", [{"for": "192.0.2.43"}, {"for": "198.51.100.17"}]),
    ('for="a,b";proto=https, for=x', [{"for": "a,b", "proto": "https"}, {"for": "x"}]),
    ('for="esc\\"aped"', [{"for": 'esc"aped'}]),
    ("for=a;", [{"for": "a"}]),
    ("for", None),
    ("for=", None),
    ('for="open', None),
    ("for=a b", None),
    ("for=a;for=b", None),
    ("=x", None),
])
def test_parse_forwarded(value, expected):
    assert parse_forwarded(value) == expected


def test_apply_rules():
    env, port = apply({"HTTP_X_FORWARDED_FOR": "203.0.113.1"}, peer="192.0.2.1")   # untrusted
    assert env["REMOTE_ADDR"] == "192.0.2.1" and port is None
    env, port = apply({"HTTP_X_FORWARDED_FOR": "203.0.113.1"}, peer="192.0.2.1", allow="*")
    assert env["REMOTE_ADDR"] == "203.0.113.1"
    env, _ = apply({"HTTP_X_FORWARDED_FOR": "203.0.113.1"}, peer="")               # Unix socket
    assert env["REMOTE_ADDR"] == "203.0.113.1"
    env, _ = apply({"HTTP_X_FORWARDED_FOR": "203.0.113.1"}, peer="::1")
    assert env["REMOTE_ADDR"] == "203.0.113.1"
    # garbage to the right of the client stops the walk: nobody can be named.
    env, _ = apply({"HTTP_X_FORWARDED_FOR": "203.0.113.1, junk"})
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    # garbage to its left is never looked at.
    env, _ = apply({"HTTP_X_FORWARDED_FOR": "junk, 203.0.113.1"})
    assert env["REMOTE_ADDR"] == "203.0.113.1"
    env, _ = apply({"HTTP_X_FORWARDED_FOR": "::ffff:203.0.113.2"})
    assert env["REMOTE_ADDR"] == "203.0.113.2"
    # Forwarded without for= everywhere: X-Forwarded-For names the client, Forwarded the scheme.
    env, _ = apply({"HTTP_FORWARDED": "proto=https", "HTTP_X_FORWARDED_FOR": "203.0.113.3"})
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("203.0.113.3", "https")
    env, port = apply({"HTTP_FORWARDED": 'for="[::1]:80", for="192.0.2.9:7"'})
    assert (env["REMOTE_ADDR"], port) == ("192.0.2.9", "7")
    env, _ = apply({"HTTP_X_FORWARDED_HOST": "h.example:8443"}, host=True)
    assert env["HTTP_HOST"] == "h.example:8443"
    env, _ = apply({"HTTP_X_FORWARDED_PORT": "0"}, host=True)
    assert env["SERVER_PORT"] == "8080"


def test_allow_list_option_is_validated(tmp_path):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "spawning", "--forwarded-allow-ips", "10.0.0.0/33",
                           "hello.application"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "10.0.0.0/33" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_django_is_secure_behind_a_tls_proxy(spawn, tmp_path):
    """Django reads the scheme from wsgi.url_scheme: behind a TLS-terminating proxy on 127.0.0.1,
    is_secure() and absolute URLs say https with no SECURE_PROXY_SSL_HEADER setting; the same
    header from an untrusted peer changes nothing."""
    pytest.importorskip("django")
    site = tmp_path / "proxysite"
    site.mkdir()
    (site / "__init__.py").write_text("")
    (site / "settings.py").write_text(
        "SECRET_KEY = 'test-only'\nDEBUG = False\nALLOWED_HOSTS = ['*']\n"
        "ROOT_URLCONF = 'proxysite.urls'\nINSTALLED_APPS = []\nMIDDLEWARE = []\nUSE_TZ = True\n"
        "DATABASES = {}\n")
    (site / "urls.py").write_text(
        "from django.http import JsonResponse\nfrom django.urls import path\n\n"
        "def view(request):\n"
        "    return JsonResponse({'secure': request.is_secure(), 'url': request.build_absolute_uri('/x'),\n"
        "                         'addr': request.META['REMOTE_ADDR']})\n\n"
        "urlpatterns = [path('', view)]\n")
    django = "--factory=spawning.factories.django.config_factory"
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.50", "Host": "shop.example"}
    server = spawn(django, "-s", "1", "-t", "2", "proxysite.settings", cwd=tmp_path)
    status, _, body = server.get("/", headers=headers)
    assert status == 200, body[:500]
    assert json.loads(body) == {"secure": True, "url": "https://shop.example/x", "addr": "203.0.113.50"}
    untrusting = spawn(django, "-s", "1", "-t", "2", "--forwarded-allow-ips", "10.0.0.1",
                       "proxysite.settings", cwd=tmp_path)
    status, _, body = untrusting.get("/", headers=headers)
    assert json.loads(body) == {"secure": False, "url": "http://shop.example/x", "addr": "127.0.0.1"}
