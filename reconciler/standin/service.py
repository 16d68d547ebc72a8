#!/usr/bin/python3
"""Stand-in for one platform service (built by ``python -m reconciler.standin.build``).

Usage: SERVICE --config PATH [--port N] [--label TEXT]...

Python standard library only; runs under /usr/bin/python3 (3.11+) as an unprivileged user under
systemd hardening and writes nothing to disk.

  GET /health   JSON status; 200 when healthy, 503 when unhealthy
  GET /metrics  Prometheus text exposition format
  GET /config   the parsed TOML config as JSON (headers: X-Config-Generation, X-Config-Sha256)
  GET /env      ``{"env_sha256": {NAME: sha256 of the value's bytes, or null when unset}, "labels_sha256":
                [...]}`` for the names in ``[standin] report_env`` and each ``--label`` argument: lets
                tests check byte-exact delivery of environment values and arguments without the values

Config (TOML): ``[server] host`` (default 127.0.0.1) and ``port`` (``--port`` overrides; default: the
service's platform port), ``[standin] healthy = false`` reports unhealthy, ``[standin] fail_start =
true`` exits 1 at start, ``[standin] ready_delay_seconds`` delays listening/READY; ``[standin]
database`` (default "connected"), ``active_workflows`` and ``queued_tasks`` are what /health and /metrics
report for the platform's fields; ``[standin] log_file`` also appends every log line to that file.
It logs at PROVISIONING_LOG_LEVEL (trace, debug, info, warn, error; default info). A version
containing "unhealthy" reports unhealthy. SIGHUP re-reads the config (a bad config is rejected and
the old one kept); SIGTERM/SIGINT stop gracefully with exit status 0. When NOTIFY_SOCKET is set it
sends READY=1, RELOADING=1/READY=1 around reloads, WATCHDOG=1 every WATCHDOG_USEC/2 and
STOPPING=1. Environment secrets (e.g. VAULT_TOKEN) are reported by name only, never by value (/env: a
sha256, only for the names the config lists).
"""

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# recon-standin-constants: build.py substitutes the next two lines
SERVICE = "standin"
VERSION = "0.0.0-dev"

sys.dont_write_bytecode = True

PLATFORM_PORTS = {
    "orchestrator": 8080,
    "control-center": 8081,
    "control-center-ui": 8082,
    "mcp-server": 8083,
    "ai-service": 8084,
    "vault-service": 8085,
    "extension-registry": 8086,
    "api-gateway": 8087,
    "provisioning-daemon": 8088,
}
DEFAULT_HOST = "127.0.0.1"
SECRET_NAME_RE = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|API_?KEY|PRIVATE_?KEY")
KNOWN_PATHS = ("/health", "/metrics", "/config", "/env")
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


class ConfigError(Exception):
    pass


# --------------------------------------------------------------------------- logging


def _journal_prefixes() -> bool:
    """True when stderr is connected to journald (then use <N> syslog priority prefixes)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3}
_RANK = {"trace": 0, "debug": 1, "info": 2, "warn": 3, "warning": 3, "error": 4}
_USE_PRIORITY = _journal_prefixes()
_LOG_LOCK = threading.Lock()
LOG_FILE: list[str] = []          # ``[standin] log_file``, set once the config is read


def log(message: str, level: str = "info") -> None:
    """One line to stderr (with a <N> priority prefix when it is the journal) at or above
    PROVISIONING_LOG_LEVEL, and to the log file when one is configured."""
    wanted = _RANK.get(os.environ.get("PROVISIONING_LOG_LEVEL", "info").lower(), _RANK["info"])
    if _RANK[level] < wanted:
        return
    prefix = f"<{_PRIORITY[level]}>" if _USE_PRIORITY else ""
    text = f"{SERVICE} {VERSION} [{os.getpid()}] {level}: {message}\n"
    with _LOG_LOCK:
        try:
            sys.stderr.write(prefix + text)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        for path in LOG_FILE:
            try:
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + text)
            except OSError:
                pass


# --------------------------------------------------------------------------- sd_notify


class Notifier:
    """Minimal sd_notify(3) client: AF_UNIX datagrams to $NOTIFY_SOCKET ('@' = abstract namespace)."""

    def __init__(self) -> None:
        raw = os.environ.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False
        if raw.startswith("@"):
            self.address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self.address = raw
        elif raw:
            log(f"unsupported NOTIFY_SOCKET address {raw!r}; notifications disabled", "warning")
        if self.address is not None:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            except OSError as exc:
                log(f"cannot create notify socket: {exc}", "warning")

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *fields: str) -> None:
        if self.sock is None or self.address is None:
            return
        try:
            with self._lock:
                self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log(f"sd_notify failed: {exc}", "warning")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not requested."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1_000_000 if value > 0 else None


# --------------------------------------------------------------------------- config / state


def load_config(path: str) -> tuple[dict[str, Any], str]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from None
    for table in ("server", "standin"):
        if not isinstance(parsed.get(table, {}), dict):
            raise ConfigError(f"[{table}] in {path} must be a table")
    return parsed, hashlib.sha256(data).hexdigest()


def section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name, {})
    return value if isinstance(value, dict) else {}


def _env_name_refs(node: Any) -> set[str]:
    """Environment variable names the config points at (values of keys ending in ``_env``)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and str(key).endswith("_env"):
                found.add(value)
            else:
                found |= _env_name_refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= _env_name_refs(item)
    return found


class State:
    def __init__(self, config_path: str, config: dict[str, Any], sha: str, labels: list[str] | None = None) -> None:
        self.config_path = config_path
        self.labels = list(labels or [])
        self.config = config
        self.config_sha256 = sha
        self.generation = 1
        self.reloads_total = 0
        self.reload_failures_total = 0
        self.last_reload_error: str | None = None
        self.started = time.monotonic()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.host = DEFAULT_HOST
        self.port = 0
        self.lock = threading.Lock()

    def reload(self) -> bool:
        try:
            config, sha = load_config(self.config_path)
        except ConfigError as exc:
            with self.lock:
                self.reload_failures_total += 1
                self.last_reload_error = str(exc)
            log(f"reload rejected, keeping generation {self.generation}: {exc}", "error")
            return False
        with self.lock:
            old_server = section(self.config, "server")
            self.config, self.config_sha256 = config, sha
            self.generation += 1
            self.reloads_total += 1
            self.last_reload_error = None
            generation = self.generation
        new_server = section(config, "server")
        if any(old_server.get(key) != new_server.get(key) for key in ("host", "port")):
            log("[server] host/port changed; takes effect on restart", "warning")
        log(f"config reloaded: generation={generation} sha256={sha[:12]}")
        return True

    def unhealthy_reasons(self) -> list[str]:
        reasons = []
        if "unhealthy" in VERSION:
            reasons.append(f"version {VERSION} is marked unhealthy")
        if section(self.config, "standin").get("healthy", True) is False:
            reasons.append("config [standin] healthy = false")
        return reasons

    def secrets_present(self) -> list[str]:
        referenced = _env_name_refs(self.config)
        return sorted(
            name
            for name, value in os.environ.items()
            if value and (name in referenced or SECRET_NAME_RE.search(name.upper()))
        )

    def env_report(self) -> dict[str, Any]:
        """sha256 of each ``[standin] report_env`` variable's value (bytes as received) and of each label."""
        with self.lock:
            names = section(self.config, "standin").get("report_env", [])
        names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
        env = os.environb
        return {
            "env_sha256": {
                n: hashlib.sha256(env[os.fsencode(n)]).hexdigest() if os.fsencode(n) in env else None for n in names
            },
            "labels_sha256": [hashlib.sha256(os.fsencode(label)).hexdigest() for label in self.labels],
        }

    def platform_figure(self, key: str) -> int:
        value = section(self.config, "standin").get(key, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def count_request(self, method: str, path: str, code: int) -> None:
        key = (method, path if path in KNOWN_PATHS else "other", code)
        log(f"{method} {key[1]} {code}", "debug")
        with self.lock:
            self.requests[key] = self.requests.get(key, 0) + 1

    def health(self) -> tuple[int, dict[str, Any]]:
        with self.lock:
            reasons = self.unhealthy_reasons()
            body: dict[str, Any] = {
                "status": "unhealthy" if reasons else "healthy",
                "version": VERSION,
                "service": SERVICE,
                "uptime_seconds": int(time.monotonic() - self.started),
                "config_sha256": self.config_sha256,
                "config_generation": self.generation,
                "pid": os.getpid(),
                "port": self.port,
                "secrets_present": self.secrets_present(),
                "database": str(section(self.config, "standin").get("database", "connected")),
                "active_workflows": self.platform_figure("active_workflows"),
                "queued_tasks": self.platform_figure("queued_tasks"),
            }
            if reasons:
                body["reasons"] = reasons
            if self.last_reload_error:
                body["last_reload_error"] = self.last_reload_error
        return (503 if reasons else 200), body

    def metrics(self) -> str:
        base = {"service": SERVICE, "version": VERSION}
        with self.lock:
            uptime = time.monotonic() - self.started
            families: list[tuple[str, str, str, list[tuple[dict[str, str], Any]]]] = [
                ("provisioning_up", "gauge", "1 while the service process is serving.", [({}, 1)]),
                (
                    "provisioning_healthy",
                    "gauge",
                    "1 when /health reports healthy, else 0.",
                    [({}, 0 if self.unhealthy_reasons() else 1)],
                ),
                ("provisioning_build_info", "gauge", "Build information (always 1).", [({}, 1)]),
                ("provisioning_workflows_total", "counter", "Workflows started.",
                 [({}, self.platform_figure("active_workflows") + self.platform_figure("completed_tasks"))]),
                ("provisioning_workflows_active", "gauge", "Workflows running now.",
                 [({}, self.platform_figure("active_workflows"))]),
                ("provisioning_tasks_queued", "gauge", "Tasks waiting.", [({}, self.platform_figure("queued_tasks"))]),
                ("provisioning_tasks_completed", "counter", "Tasks completed.",
                 [({}, self.platform_figure("completed_tasks"))]),
                ("provisioning_uptime_seconds", "gauge", "Seconds since start.", [({}, f"{uptime:.3f}")]),
                (
                    "provisioning_config_generation",
                    "gauge",
                    "Loaded config generation (1 at start).",
                    [({}, self.generation)],
                ),
                (
                    "provisioning_config_reloads_total",
                    "counter",
                    "Successful config reloads (SIGHUP).",
                    [({}, self.reloads_total)],
                ),
                (
                    "provisioning_config_reload_failures_total",
                    "counter",
                    "Rejected config reloads.",
                    [({}, self.reload_failures_total)],
                ),
                (
                    "provisioning_http_requests_total",
                    "counter",
                    "HTTP requests served.",
                    [
                        ({"method": m, "path": p, "code": str(c)}, n)
                        for (m, p, c), n in sorted(self.requests.items())
                    ],
                ),
            ]
        out: list[str] = []
        for name, kind, help_text, samples in families:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{_labels({**base, **labels})} {value}" for labels, value in samples)
        return "\n".join(out) + "\n"


def _labels(labels: dict[str, str]) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


# --------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    server_version = f"recon-standin/{VERSION}"
    timeout = 10
    state: State  # set on the subclass built in serve()

    def _send(self, code: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        # Count before answering: a client that reads /metrics right after this
        # response must already see this request.
        self.state.count_request(self.command, self.path.split("?", 1)[0], code)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        body = (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode()
        self._send(code, body, "application/json", extra)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            code, payload = self.state.health()
            self._json(code, payload)
        elif path == "/metrics":
            self._send(200, self.state.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/config":
            with self.state.lock:
                config, generation, sha = self.state.config, self.state.generation, self.state.config_sha256
            self._json(200, config, {"X-Config-Generation": str(generation), "X-Config-Sha256": sha})
        elif path == "/env":
            self._json(200, self.state.env_report())
        else:
            self._json(404, {"error": "not found", "path": path})

    do_HEAD = do_GET

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no per-request logging

    def log_error(self, format: str, *args: Any) -> None:
        log("http: " + (format % args).replace("\n", " "), "warning")


def make_server(host: str, port: int, state: State) -> ThreadingHTTPServer:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    handler = type("StandinHandler", (Handler,), {"state": state})
    server_cls = type(
        "StandinServer", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True}
    )
    return server_cls((host, port), handler)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=SERVICE, description=f"recon stand-in for the {SERVICE} service, version {VERSION}"
    )
    parser.add_argument("--config", required=True, help="TOML config file")
    parser.add_argument("--port", type=int, help="listen port (overrides [server] port)")
    parser.add_argument("--label", action="append", default=[], help="any text; /env reports its sha256")
    parser.add_argument("--version", action="version", version=f"{SERVICE} {VERSION}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # Signals are consumed synchronously by the main loop (sigtimedwait); threads inherit the mask.
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    args = parse_args(argv)
    try:
        config, sha = load_config(args.config)
    except ConfigError as exc:
        log(str(exc), "error")
        return 1
    standin = section(config, "standin")
    if isinstance(standin.get("log_file"), str):
        LOG_FILE.append(standin["log_file"])
    if standin.get("fail_start", False) is True:
        log("start failure requested by config ([standin] fail_start = true)", "error")
        return 1

    server_cfg = section(config, "server")
    host = str(server_cfg.get("host", DEFAULT_HOST))
    port = args.port if args.port is not None else server_cfg.get("port", PLATFORM_PORTS.get(SERVICE, 8080))
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        log(f"invalid port {port!r}", "error")
        return 1

    state = State(args.config, config, sha, args.label)
    notifier = Notifier()

    delay = standin.get("ready_delay_seconds", 0)
    if isinstance(delay, int | float) and delay > 0:
        log(f"delaying start by {delay}s ([standin] ready_delay_seconds)")
        if signal.sigtimedwait([signal.SIGTERM, signal.SIGINT], float(delay)) is not None:
            log("stopped before start")
            return 0

    try:
        server = make_server(host, port, state)
    except (OSError, OverflowError) as exc:
        log(f"cannot listen on {host}:{port}: {exc}", "error")
        return 1
    state.host, state.port = host, server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()

    reasons = state.unhealthy_reasons()
    log(
        f"listening on {host}:{state.port} config={args.config} sha256={sha[:12]} "
        f"status={'unhealthy' if reasons else 'healthy'}"
    )
    if state.secrets_present():
        log(f"secrets present in environment: {', '.join(state.secrets_present())}")
    notifier.send("READY=1", f"MAINPID={os.getpid()}", f"STATUS=serving on {host}:{state.port}")

    interval = watchdog_interval() if notifier.enabled else None
    if interval is not None:
        log(f"watchdog enabled: pinging every {interval:.3f}s")
    next_ping = time.monotonic()
    while True:
        timeout = 3600.0
        if interval is not None:
            now = time.monotonic()
            if now >= next_ping:
                if thread.is_alive():
                    notifier.send("WATCHDOG=1")
                next_ping = now + interval
            timeout = max(0.0, next_ping - time.monotonic())
        info = signal.sigtimedwait(HANDLED_SIGNALS, timeout)
        if info is None:
            continue
        if info.si_signo == signal.SIGHUP:
            log("SIGHUP received: reloading config")
            notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            state.reload()
            notifier.send("READY=1", f"STATUS=serving on {host}:{state.port} (generation {state.generation})")
            continue
        log(f"{signal.Signals(info.si_signo).name} received: stopping")
        notifier.send("STOPPING=1")
        server.shutdown()
        server.server_close()
        log("stopped")
        return 0


if __name__ == "__main__":
    sys.exit(main())
