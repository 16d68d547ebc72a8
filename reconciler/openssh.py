"""Read-only sessions for the plan/observe path (`plan`, `status`, `drift`) through the OpenSSH client:
one `ssh` process per host per command, all hosts at once, with the spec's key and known_hosts and strict
host-key checking. No gevent, paramiko or pyinfra is imported unless a host cannot be reached: then that
host is tried again through `transport.Session` (pyinfra), whose error says exactly why (a changed host
key is found as paramiko's exception, not in ssh's text). `apply` and `rollback` stay on pyinfra.

`open(early=True)` starts each host's `ssh` at once, its remote shell waiting for a script on stdin, so
the SSH login overlaps what recon does before it knows the command (imports, desired state); the first
command of each host is then written to that shell as one `{ ...; } </dev/null` group (parsed whole
before it runs, so nothing in it can read the rest of the script).

`RECON_OBSERVE_VIA=pyinfra` makes `observe_session` return pyinfra's Session (the benchmark compares both).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler import prelogin
from reconciler.errors import connect_error_message
from reconciler.prelogin import ssh_argv
from reconciler.spec.checks import ssh_key_problem
from reconciler.spec.model import Host

SSH_UNREACHED = 255   # ssh's own exit status: it could not connect, or the connection broke


@dataclass
class CommandResult:
    """The same shape as `transport.CommandResult` (observe reads `ok`, `stdout`, `stderr`)."""

    ok: bool
    stdout: str
    stderr: str
    lost: bool = False


@dataclass
class OpenSSHSession:
    """The part of `transport.Session` that observation uses: `connected`, `errors`, `commands`, `run`,
    `run_many`; use as a context manager. A host is `connected` until a command finds it is not."""

    hosts: Mapping[str, Host]
    connect_timeout: int = 10
    errors: dict[str, str] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    _up: dict[str, Host] = field(default_factory=dict)
    _fallback: Any = None     # transport.Session for the hosts ssh could not reach
    _pending: dict[str, subprocess.Popen[str]] = field(default_factory=dict)   # started early, no command yet
    while_waiting: Callable[[], None] | None = None   # run once by `run_many` while the hosts answer

    def __enter__(self) -> OpenSSHSession:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, early: bool = False) -> None:
        for name, h in self.hosts.items():
            problem = None if h.is_local or not h.ssh_key else ssh_key_problem(h.ssh_key)
            if problem:
                self.errors[name] = f"cannot connect to host {name!r}: {problem}"
                continue
            self._up[name] = h
            self.commands[name] = 0
            if early and not h.is_local:
                started = prelogin.take(name, h, self.connect_timeout)
                if started is not None:   # logging in since the process started (`reconciler.prelogin`)
                    self._pending[name] = started
                    continue
                with contextlib.suppress(OSError):   # then the command starts its own ssh
                    self._pending[name] = prelogin.spawn(h, self.connect_timeout)

    def close(self) -> None:
        for p in self._pending.values():   # never given a command: end of input ends its remote shell
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                p.communicate(input="", timeout=5)
            if p.poll() is None:
                p.kill()
                p.wait()
        self._pending.clear()
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = None
        self._up.clear()

    @property
    def connected(self) -> list[str]:
        return list(self._up)

    def _argv(self, name: str, command: str) -> list[str]:
        h = self._up[name]
        if h.is_local:
            return ["sh", "-c", command]
        return [*ssh_argv(h, self.connect_timeout), "sh -c " + shlex.quote(command)]

    def _exec(self, name: str, command: str, timeout: int | None, stdin: str | None) -> tuple[int, str, str]:
        if stdin is not None and not stdin.endswith("\n"):
            stdin += "\n"
        early = self._pending.pop(name, None) if stdin is None else None
        if early is not None:
            try:
                out, err = early.communicate(input="{\n" + command + "\n} </dev/null\n", timeout=timeout)
            except subprocess.TimeoutExpired:
                early.kill()
                early.communicate()
                return -1, "", f"TimeoutError: no answer within {timeout} s"
            return early.returncode, out, err
        try:
            p = subprocess.run(self._argv(name, command), input=stdin, capture_output=True, text=True,
                               timeout=timeout, stdin=None if stdin is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return -1, "", f"TimeoutError: no answer within {timeout} s"
        except OSError as exc:
            return -1, "", f"{type(exc).__name__}: {exc}"
        return p.returncode, p.stdout, p.stderr

    def run(self, name: str, command: str, timeout: int | None = None, stdin: str | None = None) -> CommandResult:
        """Run one shell command on one host (counted, like `transport.Session.run`)."""
        return self.run_many({name: command}, timeout, stdin)[name]

    def run_many(self, commands: Mapping[str, str], timeout: int | None = None, stdin: str | None = None
                 ) -> dict[str, CommandResult]:
        """One command per host, all hosts at once (a thread waits on each host's ssh, while this one
        runs `while_waiting`, if set, once)."""
        names = [n for n in commands if n in self._up]
        for n in names:
            self.commands[n] += 1
        raw: dict[str, tuple[int, str, str]] = {}

        def one(n: str) -> None:
            raw[n] = self._exec(n, commands[n], timeout, stdin)

        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()
        warm, self.while_waiting = self.while_waiting, None
        if warm is not None:
            warm()
        for t in threads:
            t.join()
        out: dict[str, CommandResult] = {}
        unreached: list[str] = []
        for n, (code, stdout, stderr) in raw.items():
            if code == SSH_UNREACHED and not stdout and not self._up[n].is_local:
                unreached.append(n)
            elif code == -1:
                out[n] = CommandResult(False, stdout, stderr, lost=True)
            else:
                out[n] = CommandResult(code == 0, stdout, stderr)
        if unreached:
            out.update(self._through_pyinfra(unreached, {n: commands[n] for n in unreached}, raw, timeout, stdin))
        return out

    def _through_pyinfra(self, names: list[str], commands: Mapping[str, str], raw: Mapping[str, tuple[int, str, str]],
                         timeout: int | None, stdin: str | None) -> dict[str, CommandResult]:
        """ssh could not reach these hosts: ask pyinfra's connector (also strict) why, and run the command
        through it if it gets in. A timeout is not tried twice: it is reported from ssh's own words."""
        out: dict[str, CommandResult] = {}
        retry = []
        for n in names:
            said = raw[n][2].strip().splitlines()
            if any("timed out" in line.lower() for line in said):
                self._down(n, connect_error_message(self._up[n], said[-1]))
            else:
                retry.append(n)
        if not retry:
            return out
        from reconciler.transport import Session

        self._fallback = Session({n: self._up[n] for n in retry}, connect_timeout=self.connect_timeout)
        self._fallback.open()
        for n in retry:
            if n in self._fallback.connected:
                res = self._fallback.run(n, commands[n], timeout, stdin)
                self.commands[n] += 1
                out[n] = CommandResult(res.ok, res.stdout, res.stderr, res.lost)
            else:
                self._down(n, self._fallback.errors.get(n) or connect_error_message(self._up[n], "could not connect"))
        return out

    def _down(self, name: str, message: str) -> None:
        self.errors[name] = message
        self._up.pop(name, None)


def observe_session(hosts: Mapping[str, Host]) -> Any:
    """The session `plan`, `status` and `drift` observe through: OpenSSH when `ssh` is on the PATH,
    else (or with RECON_OBSERVE_VIA=pyinfra) pyinfra's. Not opened yet."""
    if os.environ.get("RECON_OBSERVE_VIA") == "pyinfra" or shutil.which("ssh") is None:
        from reconciler.transport import Session

        return Session(hosts)
    return OpenSSHSession(hosts)


def connect_early(hosts: Mapping[str, Host]) -> OpenSSHSession | None:
    """An OpenSSH session whose logins have started (`open(early=True)`), or None where the OpenSSH path
    is not used; the caller closes it."""
    session = observe_session(hosts)
    if not isinstance(session, OpenSSHSession):
        return None
    session.open(early=True)
    prelogin.discard()          # logins started for hosts this run does not observe
    prelogin.remember(hosts)    # the next run with this command line starts these at once
    return session
