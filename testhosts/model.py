"""The test-host harness's constants, its error type and the TestHost record (what a test gets)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = "/tmp/recon-testhosts"
DEFAULT_NET = "127.0.10"
DEFAULT_PREFIX = "rtest"
DEFAULT_RW_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
DEFAULT_TMPFS_SIZE = "2G"
INSTALL_HINT = "apt-get update && apt-get install -y systemd-container openssh-server"
IN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEMD = "/lib/systemd/systemd"
SSH_PORT = 22
MAX_INDEX = 254

class TestHostError(RuntimeError):
    """A test host could not be booted, reached or halted (the message says why and what to do)."""

    __test__ = False


@dataclass(frozen=True)
class TestHost:
    """One running test host."""

    __test__ = False

    index: int
    name: str
    address: str
    leader_pid: int
    ssh_key: Path = Path(DEFAULT_DIR) / "id_ed25519"
    known_hosts: Path = Path(DEFAULT_DIR) / "known_hosts"
    port: int = SSH_PORT
    user: str = "root"

    def spec_entry(self) -> dict[str, object]:
        """This host's entry for the `hosts:` mapping of a recon spec."""
        return {
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "ssh_key": str(self.ssh_key),
            "known_hosts": str(self.known_hosts),
        }


def hosts_spec(hosts: Sequence[TestHost], names: Sequence[str] | None = None) -> dict[str, dict[str, object]]:
    """A recon spec `hosts:` mapping for `hosts`: names[k] (default node1, node2, ...) -> spec entry."""
    if names is None:
        names = [f"node{k}" for k in range(1, len(hosts) + 1)]
    if len(names) != len(hosts):
        raise ValueError(f"{len(names)} names for {len(hosts)} hosts")
    return {name: host.spec_entry() for name, host in zip(names, hosts, strict=True)}

