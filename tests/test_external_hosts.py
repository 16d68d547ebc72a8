"""`external:` on a real host over SSH: a unit recon does not manage (installed by the test over SSH), a
dependent ordered after it (`After=`/`Wants=`), its start refused while the external is down (which external,
which dependent, why; exit 1; nothing of the external touched), and converging once it is up again; status
and watch show it, marked external."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from hosttools import Mini, _exec, pids, show

from reconciler.state import StateStore
from testhosts import TestHost

EXT_PORT = 8099
SERVER = """\
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok", "database": "connected"}).encode()
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""


def ssh(host: TestHost, script: str) -> str:
    """Run `script` on the host over real SSH (what an operator does, not recon)."""
    res = subprocess.run(["ssh", "-i", str(host.ssh_key), "-o", f"UserKnownHostsFile={host.known_hosts}",
                          "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(host.port),
                          f"{host.user}@{host.address}", "sh -s"], input=script, text=True, capture_output=True,
                         timeout=60)
    assert res.returncode == 0, res
    return res.stdout


def install_external(host: TestHost) -> None:
    unit = (f"[Unit]\nDescription=test database (not recon's)\n\n[Service]\n"
            f"ExecStart=/usr/bin/python3 /usr/local/lib/extdb.py {host.address} {EXT_PORT}\n\n"
            "[Install]\nWantedBy=multi-user.target\n")
    ssh(host, f"mkdir -p /usr/local/lib\ncat > /usr/local/lib/extdb.py <<'EOF'\n{SERVER}EOF\n"
              f"cat > /etc/systemd/system/extdb.service <<'EOF'\n{unit}EOF\n"
              "systemctl daemon-reload && systemctl start extdb.service\n"
              f"for i in $(seq 50); do curl -sf http://{host.address}:{EXT_PORT}/health && break; sleep 0.1; done\n")


def test_external_dependency_orders_and_gates_the_dependent(testhost: TestHost, tmp_path: Path,
                                                            artifacts: Any) -> None:
    install_external(testhost)
    unit_before = _exec(testhost, "cat /etc/systemd/system/extdb.service")
    m = Mini(tmp_path, [testhost], artifacts)
    base = m.doc

    def doc() -> dict[str, Any]:
        d = base()
        d["external"] = {"extdb": {"hosts": ["node1"], "unit": "extdb",
                                   "health": {"http": f"http://{testhost.address}:{EXT_PORT}/health",
                                              "expect_json": {"database": "connected"}}}}
        d["services"]["orchestrator"]["depends_on"] = ["extdb"]
        return d

    m.doc = doc                                                   # type: ignore[method-assign]
    m.apply()
    unit = _exec(testhost, "cat /etc/systemd/system/provisioning-orchestrator.service")
    assert "After=network-online.target extdb.service" in unit and "Wants=network-online.target extdb.service" in unit
    assert "Requires=" not in unit
    m.run("plan", "--detailed-exitcode", check=0)
    status = json.loads(m.run("status", "--format", "json", check=0).stdout)
    (ext,) = status["externals"]
    assert (ext["host"], ext["service"], ext["state"], ext["health"], ext["healthy"], ext["external"]) == (
        "node1", "extdb", "active/running", "HTTP 200", True, True), ext
    assert "external (not managed by recon)" in m.run("status", check=0).stdout

    # the external goes down (its owner stops it): a change that restarts orchestrator is refused
    _exec(testhost, "systemctl stop extdb.service")
    before = pids(testhost, ["orchestrator", "control-center", "mcp-server"])
    m.config_extra["orchestrator"] = {"feature": {"x": 1}}
    m.config_extra["control-center"] = {"feature": {"x": 1}}
    res = m.apply(check=1)
    why = (f"not started: external extdb is unhealthy (unit extdb.service is inactive/dead; health "
           f"http://{testhost.address}:{EXT_PORT}/health: no answer); orchestrator depends on it")
    assert why in res.stdout, res.stdout
    assert "node1/control-center" in res.stdout and "an earlier wave failed" in res.stdout, res.stdout
    res = m.run("restart", "orchestrator", "--yes", check=1)     # the imperative start/restart refuse too
    assert "external extdb is unhealthy (unit extdb.service is inactive/dead" in res.stdout + res.stderr, res
    assert pids(testhost, ["orchestrator", "control-center", "mcp-server"]) == before   # nothing restarted
    assert show(testhost, "extdb.service", "ActiveState")["ActiveState"] == "inactive"  # recon did not start it
    hist = [e for e in StateStore(tmp_path / "state").history() if e["service"] == "orchestrator"]
    assert hist[-1]["result"] == "failed" and why in hist[-1]["detail"]
    status = json.loads(m.run("status", "--format", "json", check=1).stdout)
    (ext,) = status["externals"]
    assert (ext["state"], ext["health"], ext["healthy"]) == ("inactive/dead", "no answer", False), ext
    watch = m.run("watch", "--count", "1", "--format", "json", check=None)
    tick = json.loads(watch.stdout.splitlines()[0])
    assert any(a["service"] == "extdb" and a["state"] == "firing" for a in tick["alerts"]), tick

    # its owner starts it again: the same apply converges, and the external's unit is as it was
    _exec(testhost, "systemctl start extdb.service")
    ext_pid = show(testhost, "extdb.service", "MainPID")["MainPID"]
    _exec(testhost, f"for i in $(seq 50); do curl -sf http://{testhost.address}:{EXT_PORT}/health && break; "
                    "sleep 0.1; done")
    m.apply()
    m.run("plan", "--detailed-exitcode", check=0)
    assert show(testhost, "extdb.service", "MainPID")["MainPID"] == ext_pid
    assert _exec(testhost, "cat /etc/systemd/system/extdb.service") == unit_before
