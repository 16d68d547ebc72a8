"""Helpers for tests that drive the recon CLI against real test hosts: a small spec, CLI runs, probes."""


from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testhosts import TestHost

REPO = Path(__file__).resolve().parents[1]
CANARY = "canary-Zq8vT3-secret-value"
# Runs the CLI in one process and prints, last on stderr, which of the modules {heavy} it imported.
IMPORT_PROBE = """
import sys
from reconciler.cli import main
try:
    main(sys.argv[1:], prog_name="recon")
except SystemExit as exc:
    code = exc.code
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


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
        self.state = str(tmp / "state")     # --state: the directory, or a PostgreSQL URL

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
                "metrics": {"http": "http://{address}:{port}/metrics"},
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
        return recon(*args, "-f", str(spec), "--state", self.state, cwd=self.dir, check=check, **kw)

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




# --- host invariants (ownership): what recon must never change --------------------------------------
INVARIANT_DIRS = ("/etc", "/tmp", "/var", "/root", "/usr")
ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")
# A test host's root is an overlay over this machine's `/` (reconciler.testhosts): everything written on
# the host, and only that, is in the overlay's upper layer, so that is what is compared (changes other
# processes make to this machine's files show through the lower layer and are not the host's). Paths
# the host's own services write are left out.
VOLATILE = ("/var/log", "/var/lib/systemd", "/var/cache", "/tmp", "/var/tmp", "/root/.cache", "/etc/.pwd.lock",
            *ACCOUNT_FILES, *(f + "-" for f in ACCOUNT_FILES), "/etc/subuid", "/etc/subgid", "/etc/subuid-",
            "/etc/subgid-")


@dataclass
class HostSnapshot:
    modes: dict[str, str]                       # INVARIANT_DIRS → "owner:group mode"
    accounts: dict[str, dict[str, str]]         # account file → name → its line
    files: dict[str, str]                       # every path written on the host → "uid:gid mode [size mtime] target"


def _upper_layer(host: TestHost) -> Path:
    """The overlay's upper directory, seen through systemd-nspawn's mount namespace (its tmpfs is mounted
    there, not in ours)."""
    nspawn = Path(f"/proc/{host.leader_pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    for line in Path(f"/proc/{host.leader_pid}/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == "/" and " - overlay " in line:
            opts = line.split(" - ", 1)[1].split(" ", 2)[2]
            for opt in opts.split(","):
                if opt.startswith("upperdir="):
                    upper = Path(f"/proc/{nspawn}/root{opt[len('upperdir='):]}")
                    assert upper.is_dir(), f"cannot see the overlay of host {host.name} at {upper}"
                    return upper
    raise AssertionError(f"the root of host {host.name} is not an overlay")


def _written(host: TestHost) -> dict[str, str]:
    upper = _upper_layer(host)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        rel = "/" if dirpath == str(upper) else "/" + os.path.relpath(dirpath, upper)
        dirnames[:] = [d for d in dirnames if not _volatile(os.path.join(rel, d))]
        for name in [*dirnames, *filenames]:
            path = os.path.join(rel, name)
            if _volatile(path):
                continue
            out[path] = _describe(os.path.join(dirpath, name)) or ""
    return out


def _describe(full: str) -> str | None:
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return None
    kind = stat.S_IFMT(st.st_mode)
    desc = f"{st.st_uid}:{st.st_gid} {stat.filemode(st.st_mode)}"
    if kind == stat.S_IFLNK:
        desc += " -> " + os.readlink(full)
    elif kind != stat.S_IFDIR:         # a directory's mtime moves when an entry is added inside
        desc += f" {st.st_size} {st.st_mtime_ns} rdev={st.st_rdev}"   # a whiteout (deleted): char device 0
    return desc


def _volatile(path: str) -> bool:
    return any(path == v or path.startswith(v + "/") for v in VOLATILE)


def snapshot(host: TestHost) -> HostSnapshot:
    """What `check_invariants` compares: taken before a case, compared after it."""
    modes = {}
    for line in _exec(host, "stat -c '%n %U:%G %a' " + " ".join(INVARIANT_DIRS)).splitlines():
        path, rest = line.split(" ", 1)
        modes[path] = rest
    accounts: dict[str, dict[str, str]] = {}
    for f in ACCOUNT_FILES:
        accounts[f] = {ln.split(":", 1)[0]: ln for ln in _exec(host, f"cat {f}").splitlines() if ln}
    return HostSnapshot(modes, accounts, _written(host))


def recon_paths(state_dir: Path) -> set[str]:
    """Every path recon's state says is recon's (records, what it created)."""
    p = state_dir / "recon.state.json"
    if not p.exists():
        return set()
    doc = json.loads(p.read_text())
    out: set[str] = set()
    for svcs in doc.get("hosts", {}).values():
        for rec in svcs.values():
            out |= {rec["service_dir"], rec["config_path"], rec["env_path"], *(rec.get("created_dirs") or [])}
    for items in doc.get("owned", {}).values():
        out |= {o["name"] for o in items if o["kind"] == "dir"}
    return out


def ssh_ok(host: TestHost) -> bool:
    res = subprocess.run(["ssh", "-i", str(host.ssh_key), "-p", str(host.port), "-o", "BatchMode=yes",
                          "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={host.known_hosts}",
                          "-o", "ConnectTimeout=10", f"{host.user}@{host.address}", "true"],
                         capture_output=True, text=True, timeout=30)
    return res.returncode == 0


def check_invariants(host: TestHost, before: HostSnapshot, allowed: Iterable[str] = (),
                     new_accounts: Iterable[str] = ()) -> None:
    """The host's invariants after a case: owner and mode of /etc, /tmp, /var, /root and /usr; the
    passwd/group/shadow entries of every account that existed before (byte-identical) and no other
    new account than `new_accounts`; sshd reachable; nothing written on the host outside the
    paths in `allowed` (recon's directories and files) and recon's unit files (see VOLATILE)."""
    allowed, new_accounts = set(allowed), set(new_accounts)
    after = snapshot(host)
    assert after.modes == before.modes, (before.modes, after.modes)
    for f, entries in before.accounts.items():
        changed = {n: (line, after.accounts[f].get(n)) for n, line in entries.items()
                   if after.accounts[f].get(n) != line}
        assert not changed, f"{f} entries changed: {changed}"
        extra = set(after.accounts[f]) - set(entries) - set(new_accounts)
        assert not extra, f"{f}: unexpected new entries {extra}"
    assert ssh_ok(host), "sshd is not reachable any more"

    def recon_own(path: str) -> bool:
        wants = "/etc/systemd/system/multi-user.target.wants"
        if path == wants or path.startswith(("/etc/systemd/system/provisioning-", wants + "/provisioning-")):
            return True
        return any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)

    def seen(files: dict[str, str], p: str) -> str | None:
        return files[p] if p in files else _describe(p)   # not written on the host: as in the lower layer

    moved = sorted(p for p in before.files.keys() | after.files.keys()
                   if seen(before.files, p) != seen(after.files, p) and not recon_own(p))
    assert not moved, "changed outside recon's directories: " + ", ".join(
        f"{p}: {before.files.get(p)} -> {after.files.get(p)}" for p in moved[:20])
