"""recon's state: what was applied (serial, lineage, per host and service the release and hashes),
the history of applies, and the lock. Writes are atomic (temp file, fsync, rename)."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.errors import ReconError
from reconciler.ownership import Owned

STATE_FILE = "recon.state.json"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = "recon.lock"
FORMAT_VERSION = 1


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file so that readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class ServiceRecord:
    """What recon last applied for one service on one host (never a secret value)."""

    version: str
    sha256: str
    config_sha: str
    unit_sha: str
    env_hash: str | None
    config_text: str
    unit_text: str
    service_dir: str
    config_path: str
    unit_name: str
    env_path: str
    depends_on: list[str] = field(default_factory=list)
    previous_version: str | None = None
    status: str = "applied"         # applied | in-progress | failed | rolled-back
    applied_at: str = ""
    serial: int = 0
    # directories recon created for this service alone (its service dir, `releases`); None: recorded
    # before recon tracked what it created (see docs/design.md, "Ownership")
    created_dirs: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceRecord:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class State:
    serial: int = 0
    lineage: str = ""
    updated_at: str = ""
    hosts: dict[str, dict[str, ServiceRecord]] = field(default_factory=dict)
    # per host: shared and data directories, accounts and groups recon created (reconciler.ownership)
    owned: dict[str, list[Owned]] = field(default_factory=dict)

    def record(self, host: str, service: str) -> ServiceRecord | None:
        return self.hosts.get(host, {}).get(service)

    def to_json(self) -> bytes:
        doc = {
            "format_version": FORMAT_VERSION,
            "serial": self.serial,
            "lineage": self.lineage,
            "updated_at": self.updated_at,
            "hosts": {h: {s: r.to_dict() for s, r in sorted(svcs.items())} for h, svcs in sorted(self.hosts.items())},
            "owned": {h: [o.to_dict() for o in items] for h, items in sorted(self.owned.items()) if items},
        }
        return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode()


class StateError(ReconError):
    pass


class StateStore:
    """The state directory: `recon.state.json`, `history.jsonl`, `recon.lock`."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    @property
    def path(self) -> Path:
        return self.dir / STATE_FILE

    def load(self) -> State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return State(lineage="")
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StateError(f"state file {self.path} is not valid JSON ({exc}); restore it from a backup") from None
        if doc.get("format_version") != FORMAT_VERSION:
            raise StateError(f"state file {self.path} has format_version {doc.get('format_version')!r}; "
                             f"this recon reads {FORMAT_VERSION}")
        hosts = {h: {s: ServiceRecord.from_dict(r) for s, r in svcs.items()}
                 for h, svcs in doc.get("hosts", {}).items()}
        owned = {h: [Owned.from_dict(o) for o in items if isinstance(o, dict)]
                 for h, items in (doc.get("owned") or {}).items() if isinstance(items, list)}
        return State(serial=int(doc.get("serial", 0)), lineage=str(doc.get("lineage", "")),
                     updated_at=str(doc.get("updated_at", "")), hosts=hosts, owned=owned)

    def lineage(self) -> str:
        """The lineage, created on first use (also the salt of secret fingerprints)."""
        st = self.load()
        if st.lineage:
            return st.lineage
        st.lineage = str(uuid.uuid4())
        self.save(st, bump=False)
        return st.lineage

    def save(self, state: State, bump: bool = True) -> None:
        if not state.lineage:
            state.lineage = str(uuid.uuid4())
        if bump:
            state.serial += 1
        state.updated_at = now_iso()
        atomic_write(self.path, state.to_json())

    # --- history -------------------------------------------------------------------------------
    def append_history(self, entry: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self.dir / HISTORY_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def history(self) -> list[dict[str, Any]]:
        try:
            text = (self.dir / HISTORY_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a crash is skipped
                out.append(json.loads(line))
        return out

    # --- lock ----------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.dir / LOCK_FILE

    def lock_holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.lock_path.read_text(encoding="utf-8") or "{}")
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, OSError):
            return {"id": "?", "note": "unreadable lock file"}

    @contextlib.contextmanager
    def lock(self, command: str, timeout: float = 0.0) -> Iterator[dict[str, Any]]:
        """Hold the state lock; wait up to `timeout` s; a dead holder on this machine is taken over."""
        self.dir.mkdir(parents=True, exist_ok=True)
        me = {"id": str(uuid.uuid4()), "user": _user(), "host": socket.gethostname(), "pid": os.getpid(),
              "time": now_iso(), "command": command}
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                holder = self.lock_holder() or {}
                if _is_dead(holder):
                    with contextlib.suppress(FileNotFoundError):
                        self.lock_path.unlink()
                    continue
                if time.monotonic() >= deadline:
                    raise StateError(
                        "the state is locked by " + describe_holder(holder)
                        + f"; wait for it (--lock-timeout), or if it is gone: recon force-unlock {holder.get('id', '')}"
                    ) from None
                time.sleep(0.2)
                continue
            try:
                os.write(fd, json.dumps(me).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            break
        try:
            yield me
        finally:
            holder = self.lock_holder()
            if holder and holder.get("id") == me["id"]:
                with contextlib.suppress(FileNotFoundError):
                    self.lock_path.unlink()

    def force_unlock(self, lock_id: str | None) -> dict[str, Any]:
        holder = self.lock_holder()
        if holder is None:
            raise StateError("the state is not locked")
        if lock_id and holder.get("id") != lock_id:
            raise StateError(f"the lock is held by {describe_holder(holder)}, not by lock id {lock_id}")
        self.lock_path.unlink()
        return holder


def describe_holder(h: dict[str, Any]) -> str:
    return (f"{h.get('user', '?')}@{h.get('host', '?')} (pid {h.get('pid', '?')}, since {h.get('time', '?')}, "
            f"`{h.get('command', '?')}`, lock id {h.get('id', '?')})")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def _is_dead(holder: dict[str, Any]) -> bool:
    """A holder on this machine whose process is gone (crash, kill -9) no longer holds the lock."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
