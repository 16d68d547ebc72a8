"""Helpers for tests that drive the recon CLI against real test hosts: a small spec, CLI runs, probes."""


from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from testhosts import TestHost

REPO = Path(__file__).resolve().parents[1]
CANARY = "canary-Zq8vT3-secret-value"


def recon(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 240,
          check: int | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "VAULT_TOKEN": CANARY, "NO_COLOR": "1", **(env or {})}
    res = subprocess.run([sys.executable, "-m", "reconciler", *args], cwd=cwd, env=full_env, text=True,
                         capture_output=True, timeout=timeout)
    if check is not None:
        assert res.returncode == check, f"exit {res.returncode}\nSTDOUT:\n{res.stdout}\nSTDERR:\n{res.stderr}"
    return res


class Mini:
    """A three-service spec (orchestrator → control-center → mcp-server) on the given hosts."""

    def __init__(self, tmp: Path, hosts: list[TestHost], artifacts: dict[tuple[str, str], tuple[Path, str]],
                 batch_size: int = 1) -> None:
        self.dir = tmp
        self.hosts = hosts
        self.artifacts = artifacts
        self.versions = {"orchestrator": "5.0.0", "control-center": "5.0.0", "mcp-server": "5.0.0"}
        self.config_extra: dict[str, dict[str, Any]] = {}
        self.batch_size = batch_size
        self.health_timeout = 4

    def doc(self) -> dict[str, Any]:
        services: dict[str, Any] = {}
        deps = {"orchestrator": [], "control-center": ["orchestrator"], "mcp-server": ["control-center"]}
        ports = {"orchestrator": 8080, "control-center": 8081, "mcp-server": 8083}
        for name, version in self.versions.items():
            path, sha = self.artifacts[(name, version)]
            svc: dict[str, Any] = {
                "version": version,
                "artifact": {"path": str(path), "sha256": sha},
                "port": ports[name],
                "depends_on": deps[name],
                "config": {"server": {"port": ports[name]}, **self.config_extra.get(name, {})},
            }
            if name == "control-center":
                svc["reload"] = {"signal": "HUP"}
                svc["secrets"] = {"VAULT_TOKEN": {"from_env": "VAULT_TOKEN"}}
            services[name] = svc
        return {
            "version": 1,
            "hosts": {f"node{i + 1}": h.spec_entry() for i, h in enumerate(self.hosts)},
            "defaults": {
                "type": "notify",
                "args": ["--config", "{config_path}"],
                "restart": {"policy": "on-failure", "delay_s": 1, "watchdog_s": 30},
                "limits": {"memory_max": "96M", "memory_high": "64M", "tasks_max": 64},
                "health": {"http": "http://{address}:{port}/health", "timeout_s": self.health_timeout,
                           "interval_s": 0.2},
                "config": {"server": {"host": "{address}"}},
                "rollout": {"batch_size": self.batch_size, "max_failures": 0},
            },
            "services": services,
        }

    def write(self) -> Path:
        path = self.dir / "spec.yaml"
        path.write_text(yaml.safe_dump(self.doc(), sort_keys=False))
        return path

    def run(self, *args: str, check: int | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        spec = self.write()
        return recon(*args, "-f", str(spec), "--state", str(self.dir / "state"), cwd=self.dir, check=check, **kw)

    def apply(self, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "--auto-approve", check=check)


def show(host: TestHost, unit: str, *props: str) -> dict[str, str]:
    res = _exec(host, f"systemctl show -p {','.join(props)} {unit}")
    return dict(line.split("=", 1) for line in res.splitlines() if "=" in line)


def _run_in(host: TestHost, cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a shell command inside the host (nsenter into its PID 1's namespaces), as root."""
    return subprocess.run(["nsenter", "-t", str(host.leader_pid), "-a", "--", "env", "-i",
                           "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "sh", "-c", cmd],
                          capture_output=True, text=True, timeout=60)


def _exec(host: TestHost, cmd: str) -> str:
    return _run_in(host, cmd).stdout


def health(host: TestHost, port: int, path: str = "/health") -> dict[str, Any]:
    out = _exec(host, f"curl -s -m 3 http://{host.address}:{port}{path}")
    return json.loads(out)


def pids(host: TestHost, names: list[str]) -> dict[str, str]:
    return {n: show(host, f"provisioning-{n}.service", "MainPID")["MainPID"] for n in names}


NAMES = ["orchestrator", "control-center", "mcp-server"]


