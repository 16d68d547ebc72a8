"""Fast tests for the stand-in service and its deterministic build (no systemd needed)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.standin import build as standin_build
from reconciler.standin.service import SECRET_NAME_RE

PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
READY_TIMEOUT = 5.0
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
ORCH = ("orchestrator", "5.0.0")
ORCH_UNHEALTHY = ("orchestrator", "5.0.2-unhealthy")
Artifacts = dict[tuple[str, str], Path]
SAMPLE_RE = re.compile(
    r"^[a-zA-Z_:][a-zA-Z0-9_:]*"
    r'\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\}'
    r" -?[0-9.eE+-]+(?:\s+-?[0-9]+)?$"
)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    out = tmp_path_factory.mktemp("artifacts")
    built = standin_build.build(out, [ORCH, ORCH_UNHEALTHY])
    return {key: path for key, (path, _sha) in built.items()}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    port: int
    config: Path
    stderr_path: Path

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return http_get(self.port, path)

    def health(self) -> tuple[int, dict[str, object]]:
        code, _headers, body = self.get("/health")
        return code, json.loads(body)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def wait_until(
    predicate: Callable[[], bool], timeout: float = READY_TIMEOUT, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def run_standin(
    artifact: Path,
    tmp_path: Path,
    config: str,
    *,
    port_flag: bool = True,
    port: int | None = None,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[Running]:
    port = port or free_port()
    cfg = tmp_path / "service.toml"
    cfg.write_text(config)
    err = tmp_path / "stderr.log"
    argv = [PYTHON, str(artifact), "--config", str(cfg)]
    if port_flag:
        argv += ["--port", str(port)]
    argv += extra_args
    # as under systemd, the service sees none of the test runner's own secrets (PGPASSWORD of the PostgreSQL
    # fixture, a CI token): only what the test gives it counts in `secrets_present`
    full_env = {k: v for k, v in os.environ.items() if k not in NOTIFY_ENV and not SECRET_NAME_RE.search(k.upper())}
    full_env.update(env or {})
    with open(err, "wb") as err_fh:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err_fh, env=full_env)
    running = Running(proc, port, cfg, err)
    try:
        wait_until(lambda: proc.poll() is not None or _listening(port), what="stand-in to listen")
        assert proc.poll() is None, f"stand-in exited early ({proc.returncode}): {running.stderr()}"
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


BASIC_CONFIG = """\
[server]
host = "127.0.0.1"
workers = 8

[vault]
token_env = "VAULT_TOKEN"
"""


def test_health_fields_and_secret_names_only(artifacts: Artifacts, tmp_path: Path) -> None:
    secret = "s3cr3t-value-never-printed"
    with run_standin(artifacts[ORCH], tmp_path, BASIC_CONFIG, env={"VAULT_TOKEN": secret}) as svc:
        code, headers, body = svc.get("/health")
        assert code == 200
        assert headers["Content-Type"].startswith("application/json")
        health = json.loads(body)
        assert health["status"] == "healthy"
        assert health["service"] == "orchestrator"
        assert health["version"] == "5.0.0"
        assert health["pid"] == svc.proc.pid
        assert health["config_generation"] == 1
        assert health["config_sha256"] == hashlib.sha256(svc.config.read_bytes()).hexdigest()
        assert isinstance(health["uptime_seconds"], int) and health["uptime_seconds"] >= 0
        assert health["secrets_present"] == ["VAULT_TOKEN"]
        assert secret.encode() not in body
        assert svc.get("/nope")[0] == 404
    assert svc.proc.returncode == 0
    assert secret not in svc.stderr()


def test_env_reports_sha256_of_named_variables_and_labels(artifacts: Artifacts, tmp_path: Path) -> None:
    """report_env: the sha256 of each named variable's bytes (null when unset), never the value."""
    value = "tok\r\n\"q\" \\ $X %H é\u2028 "
    label = "a b\t%%$$\u2028"
    config = BASIC_CONFIG + '[standin]\nreport_env = ["VAULT_TOKEN", "EMPTY", "UNSET"]\n'
    with run_standin(artifacts[ORCH], tmp_path, config, env={"VAULT_TOKEN": value, "EMPTY": ""},
                     extra_args=("--label", label, "--label", "")) as svc:
        code, _headers, body = svc.get("/env")
    assert code == 200
    assert json.loads(body) == {
        "env_sha256": {"VAULT_TOKEN": hashlib.sha256(value.encode()).hexdigest(),
                       "EMPTY": hashlib.sha256(b"").hexdigest(), "UNSET": None},
        "labels_sha256": [hashlib.sha256(label.encode()).hexdigest(), hashlib.sha256(b"").hexdigest()],
    }
    assert value.encode() not in body


def test_port_from_config_and_metrics_format(artifacts: Artifacts, tmp_path: Path) -> None:
    port = free_port()
    config = BASIC_CONFIG.replace("workers = 8", f"port = {port}")
    with run_standin(artifacts[ORCH], tmp_path, config, port_flag=False, port=port) as svc:
        svc.get("/health")
        code, headers, body = svc.get("/metrics")
        assert code == 200
        assert headers["Content-Type"].startswith("text/plain")
        text = body.decode()
    assert text.endswith("\n")
    samples: dict[str, str] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in {"gauge", "counter"}
            typed.add(name)
            continue
        assert SAMPLE_RE.match(line), f"not a Prometheus sample line: {line!r}"
        name = line.split("{", 1)[0]
        assert name in typed, f"sample {name} has no # TYPE"
        assert 'service="orchestrator"' in line and 'version="5.0.0"' in line
        samples.setdefault(name, line.rsplit(" ", 1)[1])
    assert samples["provisioning_up"] == "1"
    assert samples["provisioning_healthy"] == "1"
    assert samples["provisioning_config_reloads_total"] == "0"
    assert float(samples["provisioning_uptime_seconds"]) >= 0
    assert any('path="/health"' in line for line in text.splitlines() if "http_requests_total{" in line)


def test_sighup_reloads_config(artifacts: Artifacts, tmp_path: Path) -> None:
    with run_standin(artifacts[ORCH], tmp_path, BASIC_CONFIG) as svc:
        code, headers, body = svc.get("/config")
        assert code == 200 and headers["X-Config-Generation"] == "1"
        assert json.loads(body)["server"]["workers"] == 8

        svc.config.write_text(BASIC_CONFIG.replace("workers = 8", "workers = 16"))
        svc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: svc.health()[1]["config_generation"] == 2, what="generation 2")
        code, headers, body = svc.get("/config")
        assert json.loads(body)["server"]["workers"] == 16
        assert headers["X-Config-Generation"] == "2"
        assert svc.health()[1]["config_sha256"] == hashlib.sha256(svc.config.read_bytes()).hexdigest()
        assert 'provisioning_config_reloads_total{service="orchestrator",version="5.0.0"} 1' in (
            svc.get("/metrics")[2].decode()
        )

        # A broken config is rejected: old config and generation kept, failure counted.
        svc.config.write_text("[server\n")
        svc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "last_reload_error" in svc.health()[1], what="reload rejection")
        code, health = svc.health()
        assert code == 200 and health["config_generation"] == 2
        assert json.loads(svc.get("/config")[2])["server"]["workers"] == 16

        # healthy = false via reload flips /health to 503.
        svc.config.write_text(BASIC_CONFIG + "\n[standin]\nhealthy = false\n")
        svc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: svc.health()[0] == 503, what="unhealthy after reload")
        assert svc.health()[1]["config_generation"] == 3


def test_config_healthy_false_is_503(artifacts: Artifacts, tmp_path: Path) -> None:
    config = BASIC_CONFIG + "\n[standin]\nhealthy = false\n"
    with run_standin(artifacts[ORCH], tmp_path, config) as svc:
        code, health = svc.health()
        assert code == 503
        assert health["status"] == "unhealthy"
        assert "provisioning_healthy{" in svc.get("/metrics")[2].decode()


def test_unhealthy_version_is_503(artifacts: Artifacts, tmp_path: Path) -> None:
    with run_standin(artifacts[ORCH_UNHEALTHY], tmp_path, BASIC_CONFIG) as svc:
        code, health = svc.health()
        assert code == 503
        assert health["status"] == "unhealthy"
        assert health["version"] == "5.0.2-unhealthy"


@pytest.mark.parametrize("config", ["[standin]\nfail_start = true\n", "this is = = not toml\n"])
def test_start_failure_exits_1(artifacts: Artifacts, tmp_path: Path, config: str) -> None:
    cfg = tmp_path / "service.toml"
    cfg.write_text(config)
    proc = subprocess.run(
        [PYTHON, str(artifacts[ORCH]), "--config", str(cfg), "--port", str(free_port())],
        capture_output=True,
        timeout=10,
    )
    assert proc.returncode == 1
    assert proc.stderr.count(b"\n") == 1


def test_sd_notify_ready_watchdog_reload_stopping(artifacts: Artifacts, tmp_path: Path) -> None:
    name = f"recon-standin-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(0.1)
    messages: list[str] = []

    def drain_until(predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if predicate():
                return
            with suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())
        raise AssertionError(f"timed out waiting for {what}; got {messages}")

    def fields() -> list[str]:
        return [f for m in messages for f in m.split("\n")]

    env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "200000"}
    try:
        with run_standin(artifacts[ORCH], tmp_path, BASIC_CONFIG, env=env) as svc:
            drain_until(lambda: "READY=1" in fields(), "READY=1")
            assert f"MAINPID={svc.proc.pid}" in fields()
            drain_until(lambda: fields().count("WATCHDOG=1") >= 3, "3x WATCHDOG=1")

            svc.proc.send_signal(signal.SIGHUP)
            drain_until(lambda: "RELOADING=1" in fields(), "RELOADING=1")
            reload_at = fields().index("RELOADING=1")
            drain_until(lambda: "READY=1" in fields()[reload_at:], "READY=1 after reload")

            svc.proc.send_signal(signal.SIGTERM)
            assert svc.proc.wait(timeout=5) == 0
            drain_until(lambda: "STOPPING=1" in fields(), "STOPPING=1")
    finally:
        sock.close()


def test_sigterm_exits_0(artifacts: Artifacts, tmp_path: Path) -> None:
    with run_standin(artifacts[ORCH], tmp_path, BASIC_CONFIG) as svc:
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(timeout=5) == 0
    assert not _listening(svc.port)


def test_build_is_deterministic(tmp_path: Path) -> None:
    items = list(standin_build.DEFAULT_CATALOGUE)
    first = standin_build.build(tmp_path / "a", items)
    second = standin_build.build(tmp_path / "b", reversed(items))
    assert set(first) == set(items)
    shas = set()
    for key, (path, sha) in first.items():
        other_path, other_sha = second[key]
        data = path.read_bytes()
        assert data == other_path.read_bytes() == standin_build.artifact_bytes(*key)
        assert sha == other_sha == hashlib.sha256(data).hexdigest()
        assert path.name == f"{key[0]}-{key[1]}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        assert data.startswith(b"#!/usr/bin/python3\n")
        assert f'SERVICE = "{key[0]}"\nVERSION = "{key[1]}"\n'.encode() in data
        shas.add(sha)
    assert len(shas) == len(items)
    sums_a = (tmp_path / "a" / "SHA256SUMS").read_text()
    assert sums_a == (tmp_path / "b" / "SHA256SUMS").read_text()
    assert sums_a.splitlines() == [
        f"{sha}  {p.name}" for p, sha in sorted(first.values(), key=lambda v: v[0].name)
    ]


def test_build_cli_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler.standin.build",
            "--out",
            str(out),
            "--service",
            "orchestrator",
            "--version",
            "5.0.1",
            "--service",
            "api-gateway",
            "--version",
            "1.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == [
        str(out / "orchestrator-5.0.1"),
        str(out / "api-gateway-1.0.0"),
    ]
    for line in lines:
        sha, path = line.split("  ", 1)
        assert sha == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert sorted((out / "SHA256SUMS").read_text().splitlines()) == sorted(
        f"{line.split('  ')[0]}  {Path(line.split('  ')[1]).name}" for line in lines
    )
    # A later build of another artifact keeps the earlier SHA256SUMS entries.
    standin_build.build(out, [("orchestrator", "5.0.0")])
    assert len((out / "SHA256SUMS").read_text().splitlines()) == 3


def test_build_rejects_bad_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        standin_build.build(tmp_path, [("../evil", "1.0")])
    with pytest.raises(ValueError):
        standin_build.artifact_bytes("orchestrator", '1.0"; import os')


def test_platform_fields_in_health_and_metrics(artifacts: Artifacts, tmp_path: Path) -> None:
    """The platform's /health fields (database settable from the config, for expect_json) and its series."""
    with run_standin(artifacts[ORCH], tmp_path, "[standin]\nactive_workflows = 5\nqueued_tasks = 12\n") as s:
        code, body = s.health()
        assert code == 200 and (body["database"], body["active_workflows"], body["queued_tasks"]) == (
            "connected", 5, 12)
        text = s.get("/metrics")[2].decode()
        for series in ("provisioning_workflows_total", "provisioning_workflows_active 5",
                       "provisioning_tasks_queued", "provisioning_tasks_completed"):
            assert any(line.startswith(series.split()[0] + "{") for line in text.splitlines()), series
        assert re.search(r'^provisioning_workflows_active\{[^}]*\} 5$', text, re.M)
    with run_standin(artifacts[ORCH], tmp_path, '[standin]\ndatabase = "disconnected"\n') as s:
        assert s.health() == (200, {**s.health()[1], "database": "disconnected"})


def test_log_level_and_log_file(artifacts: Artifacts, tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    with run_standin(artifacts[ORCH], tmp_path, f'[standin]\nlog_file = "{log}"\n',
                     env={"PROVISIONING_LOG_LEVEL": "debug"}) as s:
        s.get("/health")
        wait_until(lambda: "GET /health 200" in s.stderr(), what="the debug line")
        assert " debug: GET /health 200" in log.read_text()
    (tmp_path / "stderr.log").unlink()
    with run_standin(artifacts[ORCH], tmp_path, "", env={"PROVISIONING_LOG_LEVEL": "error"}) as s:
        s.get("/health")
        time.sleep(0.3)
        assert " info: " not in s.stderr() and " debug: " not in s.stderr()
