"""Reach hosts through pyinfra's connectors (SSH or local): connect all at once, run one command per
host in parallel, upload files, and close every client. The only module that opens connections.

Measured rough edges of pyinfra as a library handled here (see docs/performance.md): TCP_NODELAY on
paramiko's socket (47 ms → 5 ms per command), strict host keys, SSH clients closed explicitly,
gevent monkey-patching so hosts connect and run in parallel.
"""

from __future__ import annotations

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

import contextlib
import logging
import os
import shlex
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gevent
from paramiko import BadHostKeyException
from pyinfra.api import BaseStateCallback, Config, Inventory, State
from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.api.connect import connect_all
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_state

from reconciler.errors import connect_error_message
from reconciler.spec.checks import ssh_key_problem
from reconciler.spec.model import Host

for _name in ("pyinfra", "paramiko"):
    _log = logging.getLogger(_name)
    _log.setLevel(logging.ERROR)     # errors reach recon's own handlers (apply keeps them per host)
    _log.propagate = False
    _log.addHandler(logging.NullHandler())


@dataclass
class CommandResult:
    ok: bool
    stdout: str
    stderr: str
    lost: bool = False   # the command could not run or finish: the connection is gone (stderr says why)


class _Callbacks(BaseStateCallback):
    """Sets TCP_NODELAY on each new SSH transport and records connection errors."""

    def __init__(self, errors: dict[str, str], mismatched: set[str]) -> None:
        self.errors = errors
        self.mismatched = mismatched

    def host_connect(self, state: State, host: Any) -> None:  # type: ignore[override]
        client = getattr(host.connector, "client", None)
        if client is not None:
            transport = client.get_transport()
            if transport is not None and transport.sock is not None:
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def host_connect_error(self, state: State, host: Any, error: Exception) -> None:  # type: ignore[override]
        name = host.data.get("recon_name") or host.name
        self.errors[name] = str(error.args[0] if error.args else error)
        if _caused_by(error, BadHostKeyException):  # pyinfra raises its ConnectError while handling it
            self.mismatched.add(name)


def _caused_by(error: BaseException | None, kind: type[BaseException]) -> bool:
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, kind):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _inventory_entry(h: Host) -> tuple[str, dict[str, Any]]:
    if h.is_local:
        return "@local", {"recon_name": h.name}
    data: dict[str, Any] = {
        "recon_name": h.name,
        "ssh_hostname": h.address,
        "ssh_port": h.port,
        "ssh_strict_host_key_checking": "yes",
        "ssh_connect_retries": 0,
    }
    if h.user:
        data["ssh_user"] = h.user
    if h.ssh_key:
        data["ssh_key"] = os.path.expanduser(h.ssh_key)
    known = os.path.expanduser(h.known_hosts or "~/.ssh/known_hosts")
    data["ssh_known_hosts_file"] = known
    return f"recon-{h.name}", data


@dataclass
class Session:
    """Open connections to a set of spec hosts; use as a context manager."""

    hosts: Mapping[str, Host]
    connect_timeout: int = 10
    state: State | None = None
    by_name: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    mismatched: set[str] = field(default_factory=set)   # hosts whose key differs from known_hosts
    lost: set[str] = field(default_factory=set)         # connected hosts whose last command found the link gone
    _inventory: dict[str, Any] = field(default_factory=dict)   # every pyinfra host by spec name (reconnect)
    _bad_key: set[str] = field(default_factory=set)     # hosts whose ssh_key file cannot be used: never retried

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        forget_known_hosts_cache()
        names: list[Any] = []
        by_key: set[str] = set()
        for h in self.hosts.values():
            problem = None if h.is_local or not h.ssh_key else ssh_key_problem(h.ssh_key)
            if problem:  # pyinfra would raise it in a greenlet, which prints a traceback
                self.errors[h.name] = f"cannot connect to host {h.name!r}: {problem}"
                by_key.add(h.name)
                continue
            name, data = _inventory_entry(h)
            names.append((name, data))
        inventory = Inventory((names, {}))
        config = Config(CONNECT_TIMEOUT=self.connect_timeout, FAIL_PERCENT=100)
        state = State(inventory=inventory, config=config, check_for_changes=False)
        state.add_callback_handler(_Callbacks(self.errors, self.mismatched))
        self.state = state
        ctx_state.set(state)
        state.set_stage(StateStage.Connect)
        hub = gevent.get_hub()
        not_error = hub.NOT_ERROR
        hub.NOT_ERROR = (*not_error, Exception)  # a failed connect is reported per host below, not as a traceback
        try:
            connect_all(state)
        except Exception as exc:
            for host in inventory:
                if not host.connected:
                    self.errors.setdefault(host.data.get("recon_name"), str(exc))
        finally:
            hub.NOT_ERROR = not_error
        self._bad_key = by_key
        for host in inventory:
            name = host.data.get("recon_name")
            self._inventory[name] = host
            if host.connected:
                self.by_name[name] = host
                self.commands[name] = 0
            else:
                self.errors.setdefault(name, "could not connect")
        for name, msg in list(self.errors.items()):
            if name in by_key:
                continue
            self.errors[name] = connect_error_message(self.hosts[name], msg, name in self.mismatched)

    def close(self) -> None:
        for host in self.by_name.values():
            with contextlib.suppress(Exception):
                host.disconnect()
            client = getattr(host.connector, "client", None)
            if client is not None:
                client.close()
        self.by_name.clear()

    @property
    def connected(self) -> list[str]:
        return list(self.by_name)

    @property
    def down(self) -> list[str]:
        """Hosts to connect again: those that could not connect (but not for an unusable key file) and those
        whose connection a command found gone."""
        return sorted((set(self.errors) - self._bad_key) | self.lost)

    def reconnect(self, names: list[str] | None = None) -> list[str]:
        """Connect again, all at once, the hosts that are down (`down`, or the given names): the old client is
        closed first, host keys are checked as strictly as at `open`. A host that still cannot be reached
        keeps its error (why, in `errors`); the names connected again are returned. (`recon watch` calls this
        before each tick, so a host that comes back is read again and its recovery alert fires.)"""
        todo = [n for n in (self.down if names is None else names) if n in self._inventory]
        if not todo:
            return []
        forget_known_hosts_cache()
        for n in todo:
            host = self._inventory[n]
            self.by_name.pop(n, None)
            self.errors.pop(n, None)
            self.mismatched.discard(n)
            self.lost.discard(n)
            if host.connected:
                with contextlib.suppress(Exception):
                    host.disconnect()
            client = getattr(host.connector, "client", None)
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
            host.connected = False
        hub = gevent.get_hub()
        not_error = hub.NOT_ERROR
        hub.NOT_ERROR = (*not_error, Exception)
        try:
            gevent.joinall([gevent.spawn(self._inventory[n].connect, show_errors=False) for n in todo])
        finally:
            hub.NOT_ERROR = not_error
        back = []
        for n in todo:
            host = self._inventory[n]
            if host.connected:
                self.by_name[n] = host
                self.commands.setdefault(n, 0)
                back.append(n)
            else:
                msg = self.errors.get(n, "could not connect")
                self.errors[n] = connect_error_message(self.hosts[n], msg, n in self.mismatched)
        return back

    def run(self, name: str, command: str, timeout: int | None = None, stdin: str | None = None
            ) -> CommandResult:
        """Run one shell command on one host (counted; the plan tests count round trips). `stdin` (text,
        a final newline added if missing) is how data that must not be on a command line gets there."""
        host = self.by_name[name]
        self.commands[name] = self.commands.get(name, 0) + 1
        kwargs: dict[str, Any] = {}
        if timeout:
            kwargs["_timeout"] = timeout
        if stdin is not None:
            kwargs["_stdin"] = stdin
        try:
            ok, out = host.run_shell_command(StringCommand(command), **kwargs)
        except Exception as exc:
            self.lost.add(name)
            return CommandResult(False, "", f"{type(exc).__name__}: {exc}", lost=True)
        return CommandResult(ok, out.stdout, out.stderr)

    def put(self, name: str, src: Any, dest: str) -> CommandResult:
        """Upload a file (a path or a file object) over the host's connector, SFTP over SSH (counted as one
        round trip). A failure says why; a lost connection is marked as for `run`."""
        host = self.by_name[name]
        self.commands[name] = self.commands.get(name, 0) + 1
        try:
            ok = host.connector.put_file(src, dest)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            transport = getattr(getattr(host.connector, "client", None), "get_transport", lambda: None)()
            if transport is None or not transport.is_active():
                self.lost.add(name)
                return CommandResult(False, "", text, lost=True)
            return CommandResult(False, "", text)
        return CommandResult(bool(ok) or ok is None, "", "" if ok or ok is None else f"uploading to {dest} failed")

    def execute(self, name: str, commands: Iterable[Any], stdin: str | None = None,
                on_line: Callable[[str], None] | None = None, timeout: int | None = None) -> CommandResult:
        """Run the commands a pyinfra operation yields (`FileUploadCommand`, `StringCommand`), in order, one
        round trip each; stop at the first that fails. `stdin` goes to the shell commands, `on_line` gets each
        line of their output as it arrives (then they take no stdin)."""
        res = CommandResult(True, "", "")
        for cmd in commands:
            if isinstance(cmd, FileUploadCommand):
                res = self.put(name, cmd.src, cmd.dest)
            elif on_line is not None:
                res = self.stream(name, cmd.get_raw_value(), on_line, timeout=timeout)
            else:
                res = self.run(name, cmd.get_raw_value(), timeout=timeout, stdin=stdin)
            if not res.ok:
                break
        return res

    def stream(self, name: str, command: str, on_line: Callable[[str], None], timeout: int | None = None
               ) -> CommandResult:
        """Run one shell command, handing each line of its output to `on_line` as it arrives (a health
        gate's progress). Over SSH it is one channel of pyinfra's client, like `run`; with the local
        connector the lines come at the end."""
        host = self.by_name[name]
        client = getattr(host.connector, "client", None)
        if client is None or client.get_transport() is None:
            res = self.run(name, command, timeout)
            for line in res.stdout.splitlines():
                on_line(line)
            return res
        self.commands[name] = self.commands.get(name, 0) + 1
        lines: list[str] = []
        try:
            chan = client.get_transport().open_session()
            chan.settimeout(timeout)
            chan.set_combine_stderr(True)
            chan.exec_command("sh -c " + shlex.quote(command))
            for raw in chan.makefile("rb"):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                lines.append(line)
                on_line(line)
            code = chan.recv_exit_status()
        except Exception as exc:
            self.lost.add(name)
            return CommandResult(False, "\n".join(lines), f"{type(exc).__name__}: {exc}", lost=True)
        if code == -1:   # no exit status: the connection went away before the command finished
            self.lost.add(name)
            return CommandResult(False, "\n".join(lines), "SSHException: the connection closed before the command "
                                 "finished", lost=True)
        return CommandResult(code == 0, "\n".join(lines), "")

    def run_many(self, commands: Mapping[str, str], timeout: int | None = None) -> dict[str, CommandResult]:
        """One command per host, all hosts at once."""
        jobs = {name: gevent.spawn(self.run, name, cmd, timeout) for name, cmd in commands.items()
                if name in self.by_name}
        gevent.joinall(list(jobs.values()))
        return {name: job.value for name, job in jobs.items()}


def forget_known_hosts_cache() -> None:
    """pyinfra memoizes known_hosts files per path for the process: re-read them for each session."""
    try:
        from pyinfra.connectors.sshuserclient.client import get_host_keys
    except ImportError:  # pragma: no cover - other pyinfra layouts
        return
    cache = getattr(get_host_keys, "cache", None)
    if isinstance(cache, dict):
        cache.clear()
