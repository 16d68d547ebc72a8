"""Process, cgroup, sysctl and port helpers of the test-host harness (Linux /proc and /sys, no state)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from testhosts.model import TestHostError

# The containers share this machine's root user, hence its inotify quota (default 128 instances: about
# 20 hosts' worth); up() raises these machine-wide minimums, never lowers them.
SYSCTL_MINIMUMS = {"fs/inotify/max_user_instances": 8192, "fs/inotify/max_user_watches": 524288}


def _proc_state(pid: int) -> str | None:
    """The state letter of process `pid` (R, S, Z, ...) or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _proc_ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _proc_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path.name})"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # console colours
    return "\n".join(text.splitlines()[-lines:]) or f"({path.name} is empty)"


def _own_cgroups() -> dict[str, str]:
    """Hierarchy key (controller, 'name=systemd', 'unified') -> this process's cgroup path."""
    res: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0":
            res["unified"] = path
        else:
            for c in controllers.split(","):
                res[c] = path
    return res


def _cgroup_procs(top: Path) -> set[int]:
    pids: set[int] = set()
    for dirpath, _dirs, _files in os.walk(top):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def _remove_cgroup(top: Path, timeout: float = 5.0) -> None:
    """Kill whatever is left in cgroup subtree `top`, then remove it bottom-up."""
    deadline = time.monotonic() + timeout
    while top.exists():
        for pid in _cgroup_procs(top):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        if not top.exists():
            return
        if time.monotonic() > deadline:
            raise TestHostError(f"cannot remove cgroup {top} (processes left: {sorted(_cgroup_procs(top))})")
        time.sleep(0.05)


def _raise_sysctls() -> None:
    for key, minimum in SYSCTL_MINIMUMS.items():
        path = Path("/proc/sys", key)
        with contextlib.suppress(OSError, ValueError):
            if int(path.read_text()) < minimum:
                path.write_text(f"{minimum}\n")


def _port_free(address: str, port: int) -> bool:
    """False when something (a wildcard or this exact address) listens on address:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


def _run(argv: list[str], timeout: float | None, check: bool, input: str | None
         ) -> subprocess.CompletedProcess[str]:
    """Run a command, output captured as text; stdin is `input` or nothing. (`stdin` is passed only without
    `input`: gevent's patched subprocess.run refuses both, even `stdin=None`.)"""
    if input is not None:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check, input=input)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check,
                          stdin=subprocess.DEVNULL)

