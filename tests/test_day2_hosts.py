"""Day-2 read-outs on real hosts over SSH: `recon versions` and `recon logs` (-n, --since, -p err,
--format json, --follow), two hosts so that lines name their host."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hosttools import Mini, _exec

from reconciler.render.versions import render_versions_text
from reconciler.runner import ServiceVersions, VersionsResult
from testhosts import TestHost


def test_versions_lines_say_where_hosts_differ_and_what_the_spec_wants() -> None:
    r = VersionsResult([ServiceVersions("orchestrator", "5.0.0", {"node1": "5.0.0", "node2": "5.0.0"}),
                        ServiceVersions("control-center", "5.0.0", {"node1": "5.0.1"}),
                        ServiceVersions("api", "1.0.0", {"node1": "1.0.0", "node2": None}),
                        ServiceVersions("ui", "2.0.0", {})], ["node3: cannot connect"])
    assert render_versions_text(r).splitlines() == [
        "orchestrator: 5.0.0",
        "control-center: 5.0.1 (spec 5.0.0)",
        "api: 1.0.0 on node1, not running on node2 (spec 1.0.0)",
        "ui: unknown (no host could be read; spec 2.0.0)",
        "✗ node3: cannot connect",
    ]


def test_versions_and_logs_on_two_hosts(make_testhosts: Any, tmp_path: Path, artifacts: Any) -> None:
    hosts: list[TestHost] = make_testhosts(2)
    m = Mini(tmp_path, hosts, artifacts, batch_size=2)
    m.apply()
    res = m.run("versions", check=0)
    assert res.stdout.splitlines() == ["orchestrator: 5.0.0", "control-center: 5.0.0", "mcp-server: 5.0.0"]
    _exec(hosts[1], "systemctl stop provisioning-mcp-server.service")
    res = m.run("versions", check=0)
    assert "mcp-server: 5.0.0 on node1, not running on node2 (spec 5.0.0)" in res.stdout
    doc = json.loads(m.run("versions", "--format", "json", check=0).stdout)
    assert {s["service"]: s["running"] for s in doc["services"]}["mcp-server"] == {"node1": "5.0.0", "node2": None}

    # -n: the newest N of each host, each line naming its host
    res = m.run("logs", "control-center", "-n", "3", check=0)
    lines = res.stdout.splitlines()
    assert 2 <= len(lines) <= 6, res.stdout
    assert all(" control-center[" in ln or " control-center (systemd) " in ln for ln in lines), res.stdout
    assert {ln.split()[2] for ln in lines} == {"node1", "node2"}

    # --since and -p err: only the error logged after the mark, only on the host that logged it
    mark = _exec(hosts[0], "date '+%Y-%m-%d %H:%M:%S'").strip()
    time.sleep(1.1)
    _exec(hosts[0], "printf 'broken = [\\n' >> /etc/provisioning/control-center.toml; "
                    "systemctl reload provisioning-control-center.service")
    time.sleep(1.0)
    res = m.run("logs", "control-center", "--since", mark, "-p", "err", check=0)
    errs = res.stdout.splitlines()
    assert errs and all("node1 control-center[" in ln and " err: " in ln for ln in errs), res.stdout
    assert any("reload rejected" in ln for ln in errs)
    entries = [json.loads(ln) for ln in m.run("logs", "control-center", "--since", mark, "--format", "json",
                                              check=0).stdout.splitlines()]
    assert any(e["priority_name"] == "err" and e["host"] == "node1" and "reload rejected" in e["message"]
               for e in entries)
    assert all(set(e) == {"time", "host", "service", "priority", "priority_name", "pid", "by_systemd", "message"}
               for e in entries)
    assert m.run("logs", "control-centre", check=1).stderr.count("Did you mean 'control-center'") == 1
    assert "unknown priority" in m.run("logs", "-p", "eror", check=1).stderr

    # metrics: each service's series and systemd's figures, one command per host; re-exposed with labels
    _exec(hosts[1], "systemctl start provisioning-mcp-server.service")
    res = m.run("metrics", "orchestrator", check=0)
    assert "node1/orchestrator  state active  cpu " in res.stdout and " memory " in res.stdout, res.stdout
    assert 'provisioning_up{service="orchestrator",version="5.0.0"} 1' in res.stdout, res.stdout
    doc = json.loads(m.run("metrics", "--format", "json", check=0).stdout)
    assert {(s["host"], s["service"]) for s in doc["services"]} == {(f"node{i}", n) for i in (1, 2)
                                                                      for n in ("orchestrator", "control-center",
                                                                                "mcp-server")}
    assert all(s["systemd"]["MemoryCurrent"] > 0 and s["error"] is None for s in doc["services"])
    prom = m.run("metrics", "--format", "prometheus", check=0).stdout
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(prom)}
    up = {(s.labels["host"], s.labels["service"]) for s in fams["provisioning_up"].samples}
    assert up == {(f"node{i}", n) for i in (1, 2) for n in ("orchestrator", "control-center", "mcp-server")}
    assert all(s.value > 0 for s in fams["recon_systemd_memory_bytes"].samples)
    promtool = shutil.which("promtool")       # scripts/setup.sh installs it (from Debian's prometheus package)
    assert promtool, "promtool is not installed: run scripts/setup.sh"
    check = subprocess.run([promtool, "check", "metrics"], input=prom, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # --follow: a line logged after the start arrives while recon keeps reading
    spec = m.write()
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "logs", "orchestrator", "-f", str(spec),
                             "--host", "node1", "-n", "1", "--follow"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        deadline = time.monotonic() + 30
        kicked = False
        while time.monotonic() < deadline and "SIGHUP" not in seen:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                seen += proc.stdout.readline()                   # type: ignore[union-attr]
            if seen and not kicked:                              # connected: the last entry came
                _exec(hosts[0], "systemctl kill -s HUP provisioning-orchestrator.service")
                kicked = True
        assert "SIGHUP" in seen.split("\n", 1)[-1], seen            # a line that came after the start
        assert proc.poll() is None                               # still following
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
