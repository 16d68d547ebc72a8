"""`recon watch` on a real host whose sshd goes away and comes back: the tick after it is back connects
again (pyinfra's session, strict host keys), reads the host, and fires the recovery alert; sshd being down
fires one `unreachable` alert, not one per tick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hosttools import Mini, _run_in

from testhosts import TestHost


def _stop_sshd(host: TestHost) -> None:
    """sshd's listener and every session it holds (recon's connection too) go away; only ssh.service is
    touched in the host."""
    _run_in(host, "systemctl stop ssh.socket 2>/dev/null; systemctl stop ssh.service; "
                  "systemctl kill --kill-whom=all --signal=KILL ssh.service; true")


def test_watch_reconnects_a_host_that_comes_back_and_fires_the_recovery(testhost: TestHost, tmp_path: Path,
                                                                          artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    log = tmp_path / "alerts.log"
    exec_cmd = f'printf "%s %s %s\\n" "$RECON_ALERT_STATE" "$RECON_ALERT_HOST" "$RECON_ALERT_KIND" >> {log}'
    spec = m.write()
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "watch", "-f", str(spec), "--state",
                             str(tmp_path / "state"), "--interval", "1", "--count", "10", "--format", "json",
                             "--alert-exec", exec_cmd], cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"},
                            stdout=subprocess.PIPE, text=True)
    ticks: list[dict[str, Any]] = []
    down_at = back_at = 0
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            ticks.append(json.loads(line))
            if len(ticks) == 2:
                _stop_sshd(testhost)
            if not down_at and any(a["kind"] == "unreachable" for a in ticks[-1]["alerts"]):
                down_at = len(ticks)
            if down_at and not back_at and len(ticks) == down_at + 2:   # two ticks unreachable, then back
                assert _run_in(testhost, "systemctl start ssh.service").returncode == 0
                time.sleep(0.5)
                back_at = len(ticks)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _run_in(testhost, "systemctl start ssh.service")
    assert len(ticks) == 10 and down_at and back_at, (down_at, back_at, [t["errors"] for t in ticks])
    alerts = [(t["tick"], a["state"], a["host"], a["service"], a["kind"]) for t in ticks for a in t["alerts"]]
    assert [a[1:] for a in alerts] == [("firing", "node1", "*", "unreachable"),
                                       ("resolved", "node1", "*", "unreachable")], alerts
    assert alerts[1][0] == back_at + 1                          # the first tick after sshd is back
    # while down every service reads unreachable; once back, all of them are read again, active and healthy
    assert {r["state"] for r in ticks[down_at - 1]["services"]} == {"unreachable"}
    for t in ticks[back_at:]:
        assert t["errors"] == [] and all(r["state"] == "active/running" and r["healthy"] for r in t["services"]), t
    assert log.read_text().splitlines() == ["firing node1 unreachable", "resolved node1 unreachable"]
