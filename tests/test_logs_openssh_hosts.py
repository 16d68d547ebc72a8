"""`recon logs` without `--follow` reads the journal through the OpenSSH client (like `recon plan`) and
loads none of pyinfra, gevent, paramiko, rich or the plan model; the lines are the same as before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hosttools import CANARY, IMPORT_PROBE, Mini

from testhosts import TestHost

HEAVY = ("pyinfra", "gevent", "paramiko", "rich", "reconciler.plan", "reconciler.transport")


def test_logs_read_through_openssh_without_heavy_imports(testhost: TestHost, tmp_path: Path, artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    spec = m.write()
    argv = [sys.executable, "-c", IMPORT_PROBE.format(heavy=HEAVY), "logs", "orchestrator", "-n", "5", "-f",
            str(spec), "--state", str(tmp_path / "state")]
    res = subprocess.run(argv, cwd=tmp_path, env={**os.environ, "VAULT_TOKEN": CANARY, "NO_COLOR": "1"},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.strip().splitlines()[-1] == "HEAVY=", res.stderr
    lines = res.stdout.splitlines()
    assert 1 <= len(lines) <= 5 and all(" orchestrator" in ln for ln in lines), res.stdout
    # the same through pyinfra's session (RECON_OBSERVE_VIA=pyinfra: no OpenSSH session is started)
    via = m.run("logs", "orchestrator", "-n", "5", check=0, env={"RECON_OBSERVE_VIA": "pyinfra"})
    assert via.stdout.splitlines() == lines
