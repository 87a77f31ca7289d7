"""examples/deploy/, exercised: what each file says is checked against the server it configures.

- nginx.conf: a real nginx (skipped when not installed) in front of a real spawning, TLS ending at
  nginx, a request from another loopback address: the proxy headers arrive, and with
  --forwarded-allow-ips (when this spawning has it) REMOTE_ADDR and wsgi.url_scheme are the
  client's, and a client's own X-Forwarded-For is not believed;
- spawning.socket / spawning.service: ``systemd-analyze verify`` where systemd is installed; the
  service's command line parsed by spawning's own parser, and run for real under socket
  activation (LISTEN_FDS/LISTEN_PID, the socket as descriptor 3) as systemd would start it, with a
  restart that loses no queued connection;
- Dockerfile: parsed (dockerfile-parse), its CMD parsed by spawning's parser and served;
- kubernetes.yaml: validated against the Kubernetes schema (kubernetes-validate, offline), and its
  probes, ports and grace period checked against the real server and the real flags.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, ROOT, free_port, http_request, wait_until

from spawning.config.sources import parse_args
from spawning.process.shutdown import KILL_AFTER

DEPLOY = ROOT / "examples" / "deploy"


def _flag(argv: list[str], name: str) -> str:
    """The value of ``name`` in an argument list (as the option table parses it)."""
    values = parse_args(argv)
    return values[name]


def _replace_value(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    i = out.index(flag)
    out[i + 1] = value
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), str(ROOT / "examples"),
                                         env.get("PYTHONPATH", "")])
    return env


def _wait_http(port: int, path: str, want: int = 200, timeout: float = 15.0, **kw: Any) -> tuple:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = http_request(port, path, timeout=5, **kw)
            if last[0] == want:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"GET :{port}{path}: {last!r}, wanted {want}")


def _stop(proc: subprocess.Popen, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def _has_forwarded_allow_ips() -> bool:
    out = subprocess.run([sys.executable, "-m", "spawning", "--help"], check=False, capture_output=True,
                         text=True, timeout=30, cwd=str(ROOT)).stdout
    return "--forwarded-allow-ips" in out


# ---- systemd ---------------------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (keys may repeat; comments skipped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _exec_start() -> list[str]:
    service = _unit(DEPLOY / "spawning.service")
    (command,) = service["Service"]["ExecStart"]
    return shlex.split(command)


def test_systemd_units_hold_together():
    socket_unit = _unit(DEPLOY / "spawning.socket")
    service = _unit(DEPLOY / "spawning.service")
    assert "spawning.socket" in service["Unit"]["Requires"][0].split()
    svc = {k: v[-1] for k, v in service["Service"].items()}
    # The controller alone gets SIGTERM: with control-group every worker would drain at once.
    assert svc["KillMode"] == "mixed"
    assert svc["Type"] == "notify"
    assert svc["ExecReload"].endswith("-HUP $MAINPID")
    argv = _exec_start()
    assert Path(argv[0]).name == "spawning"
    values = parse_args(argv[1:])          # exits 2 on any flag spawning does not know
    assert values["args"], "an application"
    assert not values["bind"] and not values["daemonize"], "the port comes from the socket unit"
    # systemd must not SIGKILL a shutdown that is on time.
    budget = values["shutdown_delay"] + values["graceful_timeout"] + KILL_AFTER
    assert float(svc["TimeoutStopSec"]) > budget, (svc["TimeoutStopSec"], budget)
    (listen,) = socket_unit["Socket"]["ListenStream"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", listen)
    assert int(socket_unit["Socket"]["Backlog"][0]) == parse_args(["x"])["backlog"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path):
    """systemd's own parser: it warns (and still exits 0) on an unknown key or a bad value, so any
    output fails the test. The command must exist: the venv's spawning stands in for
    /srv/app/.venv/bin/spawning."""
    spawning_bin = Path(sys.executable).with_name("spawning")
    if not spawning_bin.exists():
        pytest.skip("no spawning script next to this interpreter")
    for name in ("spawning.socket", "spawning.service"):
        text = (DEPLOY / name).read_text()
        text = text.replace(_exec_start()[0], str(spawning_bin))
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "spawning.socket"),
                           str(tmp_path / "spawning.service")], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), \
        proc.stdout + proc.stderr


def _activated(listener: socket.socket, argv: list[str], tmp_path: Path, tag: str) -> subprocess.Popen:
    """Starts spawning as systemd does for a socket-activated service: the listening socket as
    descriptor 3, LISTEN_FDS=1 and LISTEN_PID naming the process that execs (sh's $$)."""
    fd = listener.fileno()
    os.set_inheritable(fd, True)

    def as_fd3() -> None:
        os.dup2(fd, 3)

    cmd = "LISTEN_FDS=1 LISTEN_PID=$$ exec " + " ".join(shlex.quote(a) for a in argv)
    with open(tmp_path / f"{tag}.log", "wb") as err:
        # preexec_fn only dup2()s (no lock a thread of ours could hold): the descriptor must be 3.
        return subprocess.Popen(["sh", "-c", cmd], preexec_fn=as_fd3,  # noqa: PLW1509
                                close_fds=False, env=_env(), cwd=str(ROOT),
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)


def test_socket_activation_as_the_service_runs_it(tmp_path: Path):
    """The service's own flags (its app replaced by a test app, its status port by a free one),
    on a socket bound here as spawning.socket has systemd bind it. spawning adopts descriptor 3 and
    binds nothing; after it exits the socket still listens (it is systemd's), so a connection made
    meanwhile waits in the queue and the next start serves it."""
    argv = _exec_start()
    flags = [a for a in argv[1:] if a not in parse_args(argv[1:])["args"]]
    status_port = free_port()
    flags = _replace_value(flags, "--status-port", str(status_port))
    health = _flag(flags, "health_path")
    shutdown_delay = _flag(flags, "shutdown_delay")
    server_argv = [sys.executable, "-m", "spawning", *flags, "--processes", "1",
                   "deploy_apps.echo"]

    port = free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    first = _activated(listener, server_argv, tmp_path, "first")
    second = None
    try:
        _, _, body = _wait_http(port, "/hello")
        assert json.loads(body)["PATH_INFO"] == "/hello"
        assert http_request(port, health)[::2] == (200, b"ok\n")
        assert _wait_http(status_port, "/readyz")[2] == b"ready\n"
        sent = time.monotonic()
        first.send_signal(signal.SIGTERM)
        _wait_http(status_port, "/readyz", want=503, timeout=3)
        # The workers hear of it over their channels, a moment after the controller's /readyz.
        wait_until(lambda: http_request(port, health)[::2] == (503, b"shutting down\n"), 2,
                   what="the worker's health path to answer 503")
        assert first.wait(shutdown_delay + 15) == 0
        assert time.monotonic() - sent >= shutdown_delay - 0.5
        log = (tmp_path / "first.log").read_text()
        assert "listening on" in log and f"127.0.0.1:{port}" in log

        # Between two starts: the kernel holds the connection (systemd's socket listens on).
        waiting = socket.create_connection(("127.0.0.1", port), timeout=10)
        waiting.sendall(b"GET /queued HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        second = _activated(listener, server_argv, tmp_path, "second")
        data = b""
        while chunk := waiting.recv(65536):
            data += chunk
        waiting.close()
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        assert b'"/queued"' in data
    finally:
        listener.close()
        _stop(first)
        if second is not None:
            assert _stop(second) == 0


# ---- nginx -----------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.skipif(not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists(),
                    reason="nginx is not installed")
@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
def test_nginx_site_in_front_of_spawning(spawn, tmp_path: Path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    server = spawn("-s", "1", "deploy_apps.echo")
    cert, key = _self_signed(tmp_path)
    http_port, https_port = free_port(), free_port()
    site = (DEPLOY / "nginx.conf").read_text()
    # The site as shipped, pointed at this test's ports and certificate.
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{server.port};")
    site = re.sub(r"\n\s*listen \[::\]:\d+( ssl)?;", "", site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    site = site.replace("/etc/ssl/certs/example.com.pem", str(cert))
    site = site.replace("/etc/ssl/private/example.com.key", str(key))
    assert f"127.0.0.1:{server.port}" in site and str(cert) in site
    (tmp_path / "site.conf").write_text(site)
    temp = tmp_path / "temp"
    temp.mkdir()
    main = f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {tmp_path}/site.conf;
}}
"""
    (tmp_path / "nginx.conf").write_text(main)
    check = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                           check=False, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Port 80's server redirects to https.
        _, headers, _ = _wait_http(http_port, "/x", want=301)
        assert headers["location"].startswith("https://")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 10
        while True:
            try:
                # From 127.0.0.2: an address other than nginx's own, so that believing the header
                # shows (spawning's peer is nginx at 127.0.0.1 either way).
                raw = socket.create_connection(("127.0.0.1", https_port), timeout=5,
                                               source_address=("127.0.0.2", 0))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /through?q=1 HTTP/1.1\r\nHost: app.example\r\n"
                        b"X-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        errors = (tmp_path / "error.log").read_text(errors="replace")[-2000:]
        assert head.startswith(b"HTTP/1.1 200"), (head, errors, server.stderr[-2000:])
        if b"\r\ntransfer-encoding: chunked" in head.lower():
            body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
        seen = json.loads(body)
        assert seen["PATH_INFO"] == "/through"
        # The headers the site sets arrive: the client nginx saw (not the one it claimed), the
        # scheme, host and port it was reached by.
        assert seen["HTTP_X_FORWARDED_FOR"] == "127.0.0.2"
        assert seen["HTTP_X_FORWARDED_PROTO"] == "https"
        assert seen["HTTP_X_FORWARDED_HOST"] == "app.example"
        assert seen["HTTP_X_FORWARDED_PORT"] == str(https_port)
        assert seen["HTTP_HOST"] == "app.example"
        if _has_forwarded_allow_ips():
            # Believed from nginx (127.0.0.1 is trusted by default): REMOTE_ADDR is the client's,
            # and the scheme is https as the client used it.
            assert seen["REMOTE_ADDR"] == "127.0.0.2"
            assert seen["wsgi.url_scheme"] == "https"
        else:
            assert seen["REMOTE_ADDR"] == "127.0.0.1"
    finally:
        proc.terminate()
        proc.wait(10)


# ---- Dockerfile --------------------------------------------------------------------------------------


def _dockerfile() -> list[dict[str, Any]]:
    dockerfile_parse = pytest.importorskip("dockerfile_parse")
    parser = dockerfile_parse.DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    return parser.structure


def test_dockerfile_stages_user_and_wheel():
    instructions = _dockerfile()
    froms = [i for i in instructions if i["instruction"] == "FROM"]
    assert len(froms) == 2, "multi-stage: a build stage and a runtime stage"
    build_name = froms[0]["value"].split()[-1]
    assert re.fullmatch(r"\S+ AS \S+", froms[0]["value"], re.IGNORECASE)
    final = [i for i in instructions if i["startline"] > froms[1]["startline"]]
    kinds = [i["instruction"] for i in final]
    # The wheel, built in the first stage, is the only thing installed in the second.
    copies = [i["value"] for i in final if i["instruction"] == "COPY"]
    assert any(c.startswith(f"--from={build_name} ") for c in copies), copies
    runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    assert "pip install" in runs and "--no-index" in runs and "spawning" in runs
    first_runs = " ".join(i["value"] for i in instructions[:instructions.index(froms[1])]
                          if i["instruction"] == "RUN")
    assert "pip wheel" in first_runs
    # Not root: a USER after the last RUN (which needs root to install), and a numeric one, so
    # that Kubernetes' runAsNonRoot can check it.
    users = [i for i in final if i["instruction"] == "USER"]
    assert users and users[-1]["value"] not in ("root", "0")
    assert users[-1]["value"].isdigit()
    last_run = max(i["startline"] for i in final if i["instruction"] == "RUN")
    assert users[-1]["startline"] > last_run
    assert kinds.count("ENTRYPOINT") == 1 and kinds.count("CMD") == 1
    # The context is the repository root: what the root's .dockerignore keeps out of it includes
    # a core built in place for this machine's Python, and the venv.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "*.so" in ignored and ".git" in ignored
    # Every local COPY source exists (the build context is the repository root).
    for value in copies:
        if value.startswith("--from="):
            continue
        *sources, _ = value.split()
        for src in sources:
            if src != ".":
                assert (ROOT / src).exists(), src


def _docker_command() -> list[str]:
    instructions = _dockerfile()
    entry = json.loads(next(i["value"] for i in instructions if i["instruction"] == "ENTRYPOINT"))
    cmd = json.loads(next(i["value"] for i in instructions if i["instruction"] == "CMD"))
    return [*entry, *cmd]


def test_dockerfile_command_parses_and_serves(tmp_path: Path):
    """The container's command (exec form: spawning is PID 1 and gets SIGTERM itself) parsed by
    spawning's parser, its ports EXPOSEd, and run as the image would, with the app the image
    copies."""
    argv = _docker_command()
    assert argv[0] == "spawning"
    values = parse_args(argv[1:])
    exposed = {int(p) for i in _dockerfile() if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    (bind,) = values["bind"]
    app_port = int(bind.rsplit(":", 1)[1])
    assert {app_port, values["status_port"]} <= exposed
    assert values["status_host"] == "0.0.0.0" and bind.startswith("0.0.0.0:"), "reachable from outside"
    port, status_port = free_port(), free_port()
    run = _replace_value(argv[1:], "--bind", f"127.0.0.1:{port}")
    run = _replace_value(run, "--status-port", str(status_port))
    run = _replace_value(run, "--status-host", "127.0.0.1")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "examples"), env["PYTHONPATH"]])   # /app
    proc = subprocess.Popen([sys.executable, "-m", "spawning", "-l", "/dev/null", *run], env=env,
                            cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_http(port, "/")[2] == b"Hello from spawning!\n"
        assert http_request(port, values["health_path"])[::2] == (200, b"ok\n")
        _wait_http(status_port, "/readyz")   # once every worker has loaded the app
    finally:
        assert _stop(proc) == 0


# ---- Kubernetes ----------------------------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    return [doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if doc]


def _container(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def test_kubernetes_schema():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = _manifests()
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}
    for doc in docs:
        # strict: unknown fields (a misspelt key) fail too.
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_kubernetes_probes_ports_and_grace_match_the_server(tmp_path: Path):
    docs = _manifests()
    deployment, container = _container(docs)
    values = parse_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (bind,) = values["bind"]
    assert ports["http"] == int(bind.rsplit(":", 1)[1])
    assert ports["status"] == values["status_port"] and values["status_host"] == "0.0.0.0"
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}

    probes = {kind: container[kind] for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
    for probe in probes.values():
        port = probe["httpGet"]["port"]
        assert (ports[port] if isinstance(port, str) else port) == values["status_port"]
    # Shutdown without preStop: the delay outlasts the readiness probe's notice, and the grace
    # period outlasts delay + drain + a stuck worker's last seconds.
    readiness = probes["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= values["shutdown_delay"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > values["shutdown_delay"] + values["graceful_timeout"] + KILL_AFTER
    assert "lifecycle" not in container
    # The image's user (Dockerfile) is the one runAsNonRoot is told.
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    users = [i["value"] for i in _dockerfile() if i["instruction"] == "USER"]
    assert pod_security["runAsNonRoot"] and str(pod_security["runAsUser"]) == users[-1]

    # The probe paths against the real server these args start: alive and ready, then, after
    # SIGTERM, alive and not ready while the app is still served (--shutdown-delay).
    port, status_port = free_port(), free_port()
    run = _replace_value(container["args"], "--bind", f"127.0.0.1:{port}")
    run = _replace_value(run, "--status-port", str(status_port))
    run = _replace_value(run, "--status-host", "127.0.0.1")
    run = _replace_value(run, "--shutdown-delay", "5")   # room for a loaded machine
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "examples"), env["PYTHONPATH"]])
    proc = subprocess.Popen([sys.executable, "-m", "spawning", "-l", "/dev/null", *run], env=env,
                            cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(status_port, probes["startupProbe"]["httpGet"]["path"])
        assert http_request(status_port, probes["livenessProbe"]["httpGet"]["path"])[0] == 200
        _wait_http(status_port, readiness["httpGet"]["path"])
        proc.send_signal(signal.SIGTERM)
        _wait_http(status_port, readiness["httpGet"]["path"], want=503, timeout=3)
        assert http_request(status_port, probes["livenessProbe"]["httpGet"]["path"])[0] == 200
        assert http_request(port, "/")[0] == 200
        assert proc.wait(15) == 0
    finally:
        _stop(proc)
