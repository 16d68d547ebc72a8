"""`recon watch`: which transitions alert (pure), mail through a real SMTP conversation on loopback, and on a
real host over SSH a unit stopped by hand and started again, reported to an exec and a webhook alert."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from hosttools import Mini, _exec

from reconciler.runner import StatusResult, StatusRow
from reconciler.watch import Alert, AlertKind, AlertState, send_email, transitions


def row(service: str, state: str = "active/running", healthy: bool = True, running: str | None = "1.0",
        restarts: int = 0, host: str = "node1") -> StatusRow:
    return StatusRow(host, service, "1.0", "1.0", running, state, "HTTP 200" if healthy else "HTTP 503", healthy,
                     "1M", "-", restarts, 1, "cannot connect" if state == "unreachable" else None)


def kinds(alerts: list[Alert]) -> list[tuple[str, str, str]]:
    return [(f"{a.host}/{a.service}", a.kind, a.state) for a in alerts]


def test_each_condition_fires_once_when_it_starts_and_once_when_it_ends() -> None:
    ok = StatusResult([row("api"), row("web")], [])
    assert transitions(None, ok, "t") == []                                   # a healthy start: no alert
    bad = StatusResult([row("api", healthy=False), row("web", state="failed/failed", running=None)], [])
    assert kinds(transitions(ok, bad, "t")) == [("node1/api", AlertKind.UNHEALTHY, AlertState.FIRING),
                                                 ("node1/web", AlertKind.STOPPED, AlertState.FIRING)]
    assert transitions(bad, bad, "t") == []                                   # still bad: no repeat
    assert kinds(transitions(bad, ok, "t")) == [("node1/api", AlertKind.UNHEALTHY, AlertState.RESOLVED),
                                                 ("node1/web", AlertKind.STOPPED, AlertState.RESOLVED)]
    assert kinds(transitions(None, bad, "t"))[0][2] == AlertState.FIRING      # already wrong at the start
    restarted = StatusResult([row("api", restarts=2), row("web")], [])
    (a,) = transitions(ok, restarted, "t")
    assert (a.kind, a.state, a.message) == (AlertKind.RESTARTED, AlertState.FIRING,
                                            "systemd restarted it (0 → 2 restarts)")
    other = StatusResult([row("api", running="0.9"), row("web")], [])
    assert kinds(transitions(ok, other, "t")) == [("node1/api", AlertKind.VERSION, AlertState.FIRING)]
    down = StatusResult([row("api", state="unreachable", healthy=False, running=None),
                         row("web", state="unreachable", healthy=False, running=None)], ["node1: cannot connect"])
    assert kinds(transitions(ok, down, "t")) == [("node1/*", AlertKind.UNREACHABLE, AlertState.FIRING)]
    assert kinds(transitions(down, ok, "t")) == [("node1/*", AlertKind.UNREACHABLE, AlertState.RESOLVED)]


class _SMTP(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for one message: greeting, EHLO, MAIL, RCPT, DATA, QUIT."""

    got: ClassVar[list[str]] = []

    def handle(self) -> None:
        self.wfile.write(b"220 test ESMTP\r\n")
        while line := self.rfile.readline():
            cmd = line.decode().strip().upper()
            if cmd.startswith(("EHLO", "HELO")):
                self.wfile.write(b"250 test\r\n")
            elif cmd.startswith(("MAIL", "RCPT", "RSET", "NOOP")):
                self.wfile.write(b"250 ok\r\n")
            elif cmd == "DATA":
                self.wfile.write(b"354 go on\r\n")
                body = []
                while (data := self.rfile.readline().decode()) not in (".\r\n", ""):
                    body.append(data)
                _SMTP.got.append("".join(body))
                self.wfile.write(b"250 queued\r\n")
            elif cmd == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return


def test_an_alert_is_mailed_through_the_smtp_server() -> None:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTP) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        alert = Alert("node1", "api", AlertKind.STOPPED, AlertState.FIRING, "unit is failed/failed", "t")
        assert send_email("ops@example.com", f"127.0.0.1:{server.server_address[1]}", alert) is None
        server.shutdown()
    (mail,) = _SMTP.got
    assert "Subject: [recon] firing: node1/api stopped" in mail and "To: ops@example.com" in mail
    assert send_email("ops@example.com", "127.0.0.1:1", alert) is not None     # nothing listens: said, no crash


def test_watch_alerts_a_unit_stopped_by_hand_and_its_recovery(testhost: Any, tmp_path: Path, artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    posts: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    log = tmp_path / "alerts.log"
    exec_cmd = (f'{{ printf "%s %s %s " "$RECON_ALERT_STATE" "$RECON_ALERT_HOST" "$RECON_ALERT_SERVICE"; '
                f'cat; echo; }} >> {log}')
    spec = m.write()
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "watch", "-f", str(spec), "--state",
                             str(tmp_path / "state"), "--interval", "1", "--count", "9", "--format", "json",
                             "--alert-exec", exec_cmd, "--alert-webhook", f"http://127.0.0.1:{hook.server_port}/"],
                            cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"}, stdout=subprocess.PIPE, text=True)
    ticks: list[dict[str, Any]] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            ticks.append(json.loads(line))
            if len(ticks) == 2:
                _exec(testhost, "systemctl stop provisioning-mcp-server.service")
            if len(ticks) == 5:
                _exec(testhost, "systemctl start provisioning-mcp-server.service")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        hook.shutdown()
    assert len(ticks) == 9
    alerts = [(a["state"], a["host"], a["service"], a["kind"]) for t in ticks for a in t["alerts"]]
    assert alerts == [("firing", "node1", "mcp-server", "stopped"), ("resolved", "node1", "mcp-server", "stopped")]
    assert ticks[0]["alerts"] == [] and all(t["alert_errors"] == [] for t in ticks)
    assert [(p["state"], p["service"], p["kind"]) for p in posts] == [("firing", "mcp-server", "stopped"),
                                                                     ("resolved", "mcp-server", "stopped")]
    lines = log.read_text().splitlines()
    assert [ln.split(" ", 3)[:3] for ln in lines] == [["firing", "node1", "mcp-server"],
                                                      ["resolved", "node1", "mcp-server"]]
    assert json.loads(lines[0].split(" ", 3)[3])["message"].startswith("unit is inactive")
    assert max(t["seconds"] for t in ticks[1:]) < 5
