"""Start the SSH logins of `recon plan`, `status`, `drift` and `logs` (without `--follow`) before the spec is
even parsed.

A converged plan's floor is one SSH login; Python's start, click, the spec load and its checks come
before the logins otherwise (~0.1 s). So `python -m reconciler` / `recon` calls `start(argv)` first,
with nothing imported but this module: when the previous run with the same command line, working
directory and spec file bytes recorded which hosts it observed (`remember`, in
`~/.cache/recon/logins/`, off with RECON_NO_CACHE=1), their `ssh` processes are started at once, each
waiting for its script on stdin, exactly as `OpenSSHSession.open(early=True)` would start them.

Nothing is sent to a host before the spec is checked: `OpenSSHSession.open` takes (`take`) a started
login only for a host whose connection fields in the checked spec are the ones it was started with,
and `discard` ends the others (their remote shell reads end of input and exits, or the login is
killed). Host keys are checked as strictly as ever: the argv is built here by `ssh_argv`, never read
from the cache.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.spec.model import Host

# the commands that observe through `pipeline.prepare(connect_early=True)`
COMMANDS = ("plan", "apply", "status", "drift", "logs")
NOT_EARLY = ("--follow",)                        # ... except with these (`recon logs --follow` streams via pyinfra)
FIELDS = ("address", "port", "user", "ssh_key", "known_hosts")
KEEP = 256                                      # records kept in the cache directory
CONNECT_TIMEOUT = 10                            # the logins started here use OpenSSHSession's default

_key: str | None = None                         # the cache entry of this process's command line
_started: dict[str, tuple[dict[str, Any], subprocess.Popen[str]]] = {}


def ssh_argv(h: Host | Any, connect_timeout: int = 10) -> list[str]:
    """`ssh` with the spec's key and known_hosts only, strict host keys, never a prompt, never a shared
    master connection (one made elsewhere with laxer options would skip the host-key check), never a
    write to known_hosts. The remote command follows."""
    known = os.path.expanduser(h.known_hosts or "~/.ssh/known_hosts")
    if " " in known:   # ssh splits the option's value at spaces into several files, unless quoted
        known = f'"{known}"'
    argv = ["ssh", "-T", "-x", "-p", str(h.port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no", "-o", "CheckHostIP=no",
            "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", f"ConnectTimeout={connect_timeout}"]
    if h.user:
        argv += ["-l", h.user]
    if h.ssh_key:
        argv += ["-i", os.path.expanduser(h.ssh_key), "-o", "IdentitiesOnly=yes"]
    return [*argv, "--", h.address]


def spawn(h: Host | Any, connect_timeout: int = 10) -> subprocess.Popen[str]:
    """One host's `ssh`, logging in now, its remote shell waiting for a script on stdin."""
    return subprocess.Popen([*ssh_argv(h, connect_timeout), "sh -s"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cache_dir() -> Path | None:
    if os.environ.get("RECON_NO_CACHE"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "recon" / "logins"


def spec_files(args: Sequence[str]) -> list[str] | None:
    """The `-f`/`--file` values of a command line (None if it has none, or one is cut off)."""
    files: list[str] = []
    it = iter(args)
    for a in it:
        if a in ("-f", "--file"):
            value = next(it, None)
            if value is None:
                return None
            files.append(value)
        elif a.startswith("--file="):
            files.append(a[len("--file="):])
        elif a.startswith("-f") and not a.startswith("--"):
            files.append(a[2:])
        elif a == "--":
            break
    return files or None


def cache_key(args: Sequence[str]) -> str | None:
    """A digest of the command line, the working directory, how observation goes, and the bytes of
    every spec file: equal digests name the same hosts. None for other commands or unreadable files."""
    if not args or args[0] not in COMMANDS or any(a in ("-h", "--help", *NOT_EARLY) for a in args):
        return None
    files = spec_files(args[1:])
    if files is None:
        return None
    h = hashlib.sha256(json.dumps([os.getcwd(), list(args), os.environ.get("RECON_OBSERVE_VIA")]).encode())
    try:
        for f in files:
            h.update(b"\0" + Path(f).read_bytes())
    except OSError:
        return None
    return h.hexdigest()


class _Fields:
    def __init__(self, d: Mapping[str, Any]) -> None:
        self.address, self.port, self.user = str(d["address"]), int(d["port"]), d.get("user")
        self.ssh_key, self.known_hosts = d.get("ssh_key"), d.get("known_hosts")


def start(args: Sequence[str]) -> None:
    """Start the logins recorded for this command line, if any (never raises)."""
    global _key
    _key = cache_key(args)
    cache = _cache_dir()
    if _key is None or cache is None or os.environ.get("RECON_OBSERVE_VIA") == "pyinfra":
        return
    atexit.register(discard)   # a run that ends before its session took them (a bad spec, a missing secret)
    try:
        hosts = json.loads((cache / f"{_key}.json").read_text())["hosts"]
        for name, fields in hosts.items():
            _started[name] = (fields, spawn(_Fields(fields), CONNECT_TIMEOUT))
    except (OSError, ValueError, KeyError, TypeError):
        return


def fields_of(h: Host) -> dict[str, Any]:
    return {f: getattr(h, f) for f in FIELDS}


def take(name: str, h: Host, connect_timeout: int = CONNECT_TIMEOUT) -> subprocess.Popen[str] | None:
    """The login started for host `name`, if it was started with `h`'s connection fields."""
    entry = _started.pop(name, None)
    if entry is None:
        return None
    if entry[0] == fields_of(h) and connect_timeout == CONNECT_TIMEOUT and entry[1].poll() is None:
        return entry[1]
    _end(entry[1])
    return None


def discard() -> None:
    """End every started login no session took."""
    while _started:
        _end(_started.popitem()[1][1])


def _end(p: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        p.kill()
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        p.communicate(timeout=5)


def remember(hosts: Mapping[str, Host]) -> None:
    """Record the hosts this command line observes (after the spec was checked), for the next run."""
    cache = _cache_dir()
    if _key is None or cache is None:
        return
    doc = {"hosts": {n: fields_of(h) for n, h in hosts.items() if not h.is_local}}
    path = cache / f"{_key}.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()) == doc:
            return
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)
        _prune(cache)


def _prune(cache: Path, keep: int = KEEP) -> None:
    """Keep the `keep` most recently written records (a write happens only when a record is missing)."""
    entries = sorted(cache.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()


def main() -> None:
    """The `recon` entry point: start the recorded logins, then run the CLI. A plan, status or drift
    that ends with an exit code, with no thread left, exits at once after the atexit handlers and a
    flush: tearing down ~300 imported modules is ~18 ms of CPU that no one waits for."""
    start(sys.argv[1:])
    from reconciler.cli import main as cli_main

    try:
        cli_main()
    except SystemExit as exc:
        code = exc.code
        if _key is None or not (code is None or isinstance(code, int)) or threading.active_count() != 1:
            raise
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code or 0)
