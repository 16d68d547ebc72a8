"""recon's state: what was applied (serial, lineage, per host and service the release and hashes),
the history of applies, and the lock. Writes are atomic (temp file, fsync, rename)."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import MISSING, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

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


class RecordStatus(StrEnum):
    """How far recon got with a service's last change (the state file carries the value)."""

    APPLIED = "applied"            # healthy on this release
    IN_PROGRESS = "in-progress"    # switched, not yet confirmed healthy (a crash here is confirmed next time)
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"    # back on its last healthy release after a failed gate


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
    status: RecordStatus = RecordStatus.APPLIED
    applied_at: str = ""
    serial: int = 0
    # directories recon created for this service alone (its service dir, `releases`); None: recorded
    # before recon tracked what it created (see docs/design.md, "Ownership")
    created_dirs: list[str] | None = None
    # the last apply changed this release's config, unit or secrets in place and kept the earlier files
    # beside them (`*.prev`): `recon rollback` without --to undoes that change first
    in_place: bool = False
    # set by `recon stop` (user, time, reason): the next plan says who stopped it, apply starts it again
    stopped_by: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceRecord:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "status" in known:
            known["status"] = RecordStatus(known["status"])
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


def _kind(value: Any) -> str:
    """`a list`, `a string "x"`, `null`: what was found, for a message (never a long value)."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    text = json.dumps(value)
    return names.get(type(value), type(value).__name__) + (f" {text}" if len(text) <= 40 and
                                                           not isinstance(value, dict | list) else "")


_TYPE_CHECKS: dict[str, tuple[str, Any]] = {  # ServiceRecord's annotations (strings under __future__ annotations)
    "str": ("a string", lambda v: isinstance(v, str)),
    "str | None": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "dict[str, str] | None": ("an object of strings or null", lambda v: v is None or (
        isinstance(v, dict) and all(isinstance(x, str) for x in v.values()))),
    "list[str]": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "RecordStatus": ("one of " + ", ".join(RecordStatus), lambda v: v in {str(x) for x in RecordStatus}),
    "list[str] | None": ("a list of strings or null",
                         lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v))),
}


def shape_problems(doc: Any) -> list[str]:
    """What is wrong with the shape of a parsed state file, each with where (`hosts.node1.api.version`)."""
    if not isinstance(doc, dict):
        return [f"the top level must be an object, found {_kind(doc)}"]
    out = [] if "format_version" in doc else [f"format_version: missing (expected {FORMAT_VERSION})"]
    for key, kind in (("serial", "int"), ("lineage", "str"), ("updated_at", "str")):
        what, ok = _TYPE_CHECKS[kind]
        if key in doc and not ok(doc[key]):
            out.append(f"{key}: expected {what}, found {_kind(doc[key])}")
    owned = doc.get("owned", {})
    if not isinstance(owned, dict) or not all(isinstance(v, list) for v in owned.values()):
        out.append(f"owned: expected an object of lists per host, found {_kind(owned)}")
    hosts = doc.get("hosts", {})
    if not isinstance(hosts, dict):
        return [*out, f"hosts: expected an object of hosts, found {_kind(hosts)}"]
    for host, svcs in hosts.items():
        if not isinstance(svcs, dict):
            out.append(f"hosts.{host}: expected an object of services, found {_kind(svcs)}")
            continue
        for svc, rec in svcs.items():
            where = f"hosts.{host}.{svc}"
            if not isinstance(rec, dict):
                out.append(f"{where}: expected a service record (an object), found {_kind(rec)}")
                continue
            for name, f in ServiceRecord.__dataclass_fields__.items():
                what, ok = _TYPE_CHECKS[str(f.type)]
                if name not in rec:
                    if f.default is MISSING and f.default_factory is MISSING:
                        out.append(f"{where}.{name}: missing (expected {what})")
                elif not ok(rec[name]):
                    out.append(f"{where}.{name}: expected {what}, found {_kind(rec[name])}")
    return out


class StateStore:
    """The state directory: `recon.state.json`, `history.jsonl`, `recon.lock` (a `StateBackend`)."""

    per_host_locks = False

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    @property
    def location(self) -> str:
        return str(self.dir)

    def check(self) -> None:
        """Nothing to lose: a directory does not go away mid-apply like a database connection."""

    def close(self) -> None:
        pass

    def locks(self) -> list[dict[str, Any]]:
        holder = self.lock_holder()
        return [holder] if holder else []

    def replace(self, state: State) -> None:
        """Write `state` exactly as given (serial and lineage kept): migrate and push."""
        atomic_write(self.path, state.to_json())

    @property
    def path(self) -> Path:
        return self.dir / STATE_FILE

    def load(self) -> State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return State(lineage="")
        except (OSError, ValueError) as exc:  # a directory, no permission…
            raise StateError(f"cannot read state file {self.path}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            doc = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
            raise StateError(f"state file {self.path} is not valid JSON ({exc}); restore it from a backup") from None
        if isinstance(doc, dict) and "format_version" in doc and doc["format_version"] != FORMAT_VERSION:
            raise StateError(f"state file {self.path} has format_version {doc.get('format_version')!r}; "
                             f"this recon reads {FORMAT_VERSION}")
        problems = shape_problems(doc)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise StateError(f"state file {self.path} is not a recon state: " + "; ".join(problems[:3]) + more
                             + ". recon writes it atomically, so something else changed it: restore it from a backup")
        hosts = {h: {s: ServiceRecord.from_dict(r) for s, r in svcs.items()}
                 for h, svcs in doc.get("hosts", {}).items()}
        owned = {h: [Owned.from_dict(o) for o in items if isinstance(o, dict)]
                 for h, items in (doc.get("owned") or {}).items() if isinstance(items, list)}
        return State(serial=doc.get("serial", 0), lineage=doc.get("lineage", ""),
                     updated_at=doc.get("updated_at", ""), hosts=hosts, owned=owned)

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
        return self.read_history()[0]

    @property
    def history_path(self) -> Path:
        return self.dir / HISTORY_FILE

    def read_history(self) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
        """The history entries, and the lines skipped as (line number, why): a line cut by a crash,
        bytes that are not UTF-8, JSON that is not an entry (a list, a field of the wrong type)."""
        try:
            raw = self.history_path.read_bytes()
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            raise StateError(f"cannot read history file {self.history_path}: {exc.strerror}") from None
        return split_history(_history_lines(raw))

    # --- lock ----------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.dir / LOCK_FILE

    def lock_holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.lock_path.read_text(encoding="utf-8") or "{}")
        except FileNotFoundError:
            return None
        except (ValueError, OSError):  # not JSON, not UTF-8, unreadable
            return {"id": "?", "note": "unreadable lock file"}
        return holder if isinstance(holder, dict) else {"id": "?", "note": "unreadable lock file"}

    @contextlib.contextmanager
    def lock(self, command: str, timeout: float = 0.0, hosts: Sequence[str] | None = None
             ) -> Iterator[dict[str, Any]]:
        """Hold the state lock; wait up to `timeout` s; a dead holder on this machine is taken over.
        The directory has one lock for the whole state: `hosts` (what the run touches) is not used."""
        self.dir.mkdir(parents=True, exist_ok=True)
        me = {"id": str(uuid.uuid4()), "user": current_user(), "host": socket.gethostname(), "pid": os.getpid(),
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


_HISTORY_TEXT = ("time", "user", "machine", "command", "host", "service", "action", "from", "to", "result", "detail")


@dataclass(frozen=True)
class Unreadable:
    """A history row that could not be decoded at all, and why."""

    why: str


def _history_lines(raw: bytes) -> Iterator[tuple[int, Any]]:
    """The lines of history.jsonl as (line number, parsed JSON or Unreadable); blank lines left out."""
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            entry: Any = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            entry = Unreadable("not UTF-8 text")
        except ValueError:
            entry = Unreadable("not JSON (cut by a crash?)")
        yield n, entry


def split_history(rows: Iterable[tuple[int, Any]]) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """History rows (number, entry) of any backend as the entries recon can show, and the rows skipped as
    (number, why): an `Unreadable` row, or JSON that is not an entry (a list, a field of the wrong type)."""
    out: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    for n, entry in rows:
        why = entry.why if isinstance(entry, Unreadable) else _entry_problem(entry)
        if why:
            skipped.append((n, why))
        else:
            out.append(entry)
    return out, skipped


def _entry_problem(entry: Any) -> str | None:
    """Why a parsed history line is not an entry recon can show, or None."""
    if not isinstance(entry, dict):
        return f"not a history entry (found {_kind(entry)})"
    for key in _HISTORY_TEXT:
        if entry.get(key) is not None and not isinstance(entry[key], str):
            return f"{key} is {_kind(entry[key])}, not text"
    if entry.get("serial") is not None and not _TYPE_CHECKS["int"][1](entry["serial"]):
        return f"serial is {_kind(entry['serial'])}, not a whole number"
    return None


def describe_holder(h: dict[str, Any]) -> str:
    return (f"{h.get('user', '?')}@{h.get('host', '?')} (pid {h.get('pid', '?')}, since {h.get('time', '?')}, "
            f"`{h.get('command', '?')}`, lock id {h.get('id', '?')})")


def current_user() -> str:
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


# ------------------------------------------------------------------------------ backends (issue 11)
class StateUnavailable(StateError):
    """The state's store went away (a database connection lost): the run stops before its next step."""


class StaleStateError(StateError):
    """A compare-and-swap write was refused: the stored state moved on since it was read."""


class StateBackend(Protocol):
    """Where recon keeps state, history and locks: a directory (`StateStore`) or PostgreSQL
    (`reconciler.pgstate.PgStore`). `save` is a compare-and-swap on what `load` read; `lock` takes the
    hosts a run touches (a backend with `per_host_locks` False locks the whole state)."""

    per_host_locks: bool

    @property
    def location(self) -> str: ...            # for messages: a path, or the URL without its password

    def load(self) -> State: ...

    def save(self, state: State, bump: bool = True) -> None: ...

    def replace(self, state: State) -> None: ...

    def append_history(self, entry: dict[str, Any]) -> None: ...

    def history(self) -> list[dict[str, Any]]: ...

    def read_history(self) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]: ...

    def lock(self, command: str, timeout: float = 0.0, hosts: Sequence[str] | None = None
             ) -> contextlib.AbstractContextManager[dict[str, Any]]: ...

    def locks(self) -> list[dict[str, Any]]: ...

    def force_unlock(self, lock_id: str | None) -> dict[str, Any]: ...

    def check(self) -> None: ...               # raise StateUnavailable when the store went away

    def close(self) -> None: ...


URL_PREFIXES = ("postgresql://", "postgres://")
_PASSWORD = re.compile(r"((?:postgres(?:ql)?)://[^:/@\s]*):[^@\s]*@")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def mask_url(text: str) -> str:
    """`postgresql://user:secret@db/x` → `postgresql://user:***@db/x`, and `password=…` → `password=***`."""
    return _KEYWORD_PASSWORD.sub(r"\1***", _PASSWORD.sub(r"\1:***@", text))


def is_url(location: str) -> bool:
    return location.startswith(URL_PREFIXES)


def open_store(location: str) -> StateBackend:
    """The backend for a `--state` value: a PostgreSQL URL (psycopg is imported only then) or a directory."""
    if is_url(location):
        from reconciler.pgstate import PgStore

        return PgStore(location)
    return StateStore(location)
