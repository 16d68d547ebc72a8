"""recon's state, history and locks in PostgreSQL (`--state postgresql://USER@HOST:PORT/DB`), through psycopg 3.

Imported only when a URL is used. The schema is created on first write (idempotent, versioned). Each host's
records are a row of their own, written by compare-and-swap on the serial they were read at; the state's
serial is one row incremented in the same transaction. Locks are session-level advisory locks, one per host
(plus a shared lock that a whole-state lock excludes), held on a dedicated connection for the run, with a
row naming the holder. See docs/state.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from reconciler.ownership import Owned
from reconciler.state import (
    FORMAT_VERSION,
    ServiceRecord,
    StaleStateError,
    State,
    StateError,
    StateUnavailable,
    current_user,
    describe_holder,
    mask_url,
    now_iso,
    split_history,
)

if TYPE_CHECKING:
    import psycopg

psycopg: Any = None        # imported on first connection (`_need`): a plan reads through `pgread` without it
Jsonb: Any = None


def _need() -> None:
    global psycopg, Jsonb
    if psycopg is None:
        import psycopg as module
        from psycopg.types.json import Jsonb as jsonb

        psycopg, Jsonb = module, jsonb


SCHEMA_VERSION = 1
ALL = "*"   # the lock key every per-host lock shares and a whole-state lock (migrate, push) takes alone

SCHEMA = """
CREATE TABLE IF NOT EXISTS recon_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS recon_state (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    lineage text NOT NULL,
    serial bigint NOT NULL,
    format_version integer NOT NULL,
    updated_at text NOT NULL
);
CREATE TABLE IF NOT EXISTS recon_host_state (
    host text PRIMARY KEY,
    serial bigint NOT NULL,
    records jsonb NOT NULL,
    owned jsonb NOT NULL,
    updated_at text NOT NULL
);
CREATE TABLE IF NOT EXISTS recon_history (
    id bigserial PRIMARY KEY,
    lineage text NOT NULL,
    at text NOT NULL,
    by text,
    machine text,
    command text,
    host text,
    service text,
    action text,
    result text,
    serial bigint,
    entry jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS recon_locks (
    host text PRIMARY KEY,
    id text NOT NULL,
    holder text NOT NULL,
    machine text NOT NULL,
    pid integer NOT NULL,
    command text NOT NULL,
    since text NOT NULL,
    backend_pid integer NOT NULL
);
"""


def lock_key(host: str) -> int:
    """A stable signed 64-bit advisory lock key per host (namespaced, so other users of the database
    are unlikely to collide)."""
    return int.from_bytes(hashlib.blake2b(f"recon-host-lock:{host}".encode(), digest_size=8).digest(),
                          "big", signed=True)


def _host_doc(records: dict[str, ServiceRecord], owned: list[Owned]) -> tuple[dict[str, Any], list[Any]]:
    return ({s: r.to_dict() for s, r in sorted(records.items())}, [o.to_dict() for o in owned])


def _same(a: tuple[dict[str, Any], list[Any]], b: tuple[dict[str, Any], list[Any]]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class PgStore:
    """State, history and locks in one PostgreSQL database (a `StateBackend`)."""

    per_host_locks = True

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._schema_ok = False
        self._prefetch: tuple[Any, dict[str, Any]] | None = None
        self._seen: dict[str, tuple[int, tuple[dict[str, Any], list[Any]]]] = {}   # host → (serial, doc) read

    def __repr__(self) -> str:
        return f"PgStore({self.location!r})"

    @property
    def location(self) -> str:
        return mask_url(self.url)

    # --- connections ---------------------------------------------------------------------------
    def _connect(self, name: str = "recon") -> psycopg.Connection[Any]:
        _need()
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10, application_name=name)
        except psycopg.Error as exc:
            raise StateUnavailable(f"cannot connect to the state database {self.location}: "
                                   f"{mask_url(str(exc).strip())}") from None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _lost(self, exc: BaseException, doing: str) -> StateError:
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return StateUnavailable(f"lost the state database {self.location} while {doing}: "
                                    f"{mask_url(str(exc).strip()) or type(exc).__name__}")
        return StateError(f"the state database {self.location} refused {doing}: {mask_url(str(exc).strip())}")

    def ensure_schema(self) -> None:
        """Create the tables on first use (idempotent; concurrent first uses are serialised)."""
        if self._schema_ok:
            return
        try:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("recon-schema"),))
                self.conn.execute(SCHEMA)
                row = self.conn.execute("SELECT max(version) FROM recon_schema").fetchone()
                version = row[0] if row else None
                if version is None:
                    self.conn.execute("INSERT INTO recon_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
                elif version > SCHEMA_VERSION:
                    raise StateError(f"the state database {self.location} has schema version {version}; "
                                     f"this recon knows {SCHEMA_VERSION}: upgrade recon")
        except psycopg.Error as exc:
            raise self._lost(exc, "creating its tables") from None
        self._schema_ok = True

    def check(self) -> None:
        """Raise StateUnavailable if the lock connection (or the data connection) went away."""
        for conn in (self._lock_conn, self._conn):
            if conn is None:
                continue
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as exc:
                raise self._lost(exc, "checking the connection") from None

    def close(self) -> None:
        for conn in (self._conn, self._lock_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._conn = self._lock_conn = None

    # --- state ---------------------------------------------------------------------------------
    LOAD = ("SELECT s.lineage, s.serial, s.updated_at, h.host, h.serial, h.records, h.owned "
            "FROM recon_state s LEFT JOIN recon_host_state h ON true ORDER BY h.host")

    def _load_fast(self) -> list[Any] | None:
        """The state's rows through libpq directly (`pgread`), while psycopg is not loaded; None: no tables."""
        from reconciler import pgread

        try:
            text = pgread.query(self.url, self.LOAD)
        except pgread.ReadError as exc:
            if exc.sqlstate == pgread.UNDEFINED_TABLE:
                return None
            what = "cannot connect to the state database" if not exc.connected else "cannot read the state from"
            raise StateUnavailable(f"{what} {self.location}: {mask_url(str(exc))}") from None
        return [(r[0], int(r[1] or 0), r[2], r[3], int(r[4]) if r[4] is not None else None,
                 json.loads(r[5]) if r[5] is not None else None, json.loads(r[6]) if r[6] is not None else None)
                for r in text]

    def prefetch(self) -> None:
        """Start reading the state in a thread (libpq waits on the server without the GIL), while the caller
        loads the spec: `load` takes the result. Only on the psycopg-less read path."""
        from reconciler import pgread

        if psycopg is None and self._conn is None and self._prefetch is None and pgread.available():
            import threading

            box: dict[str, Any] = {}

            def read() -> None:
                try:
                    box["rows"] = self._load_fast()
                except BaseException as exc:   # re-raised by load, in the caller's thread
                    box["error"] = exc

            thread = threading.Thread(target=read, name="recon-state-read", daemon=True)
            thread.start()
            self._prefetch = (thread, box)

    def load(self) -> State:
        from reconciler import pgread

        if self._prefetch is not None:
            (thread, box), self._prefetch = self._prefetch, None
            thread.join()
            if "error" in box:
                raise box["error"]
            if box["rows"] is None:
                return State(lineage="")
            rows = box["rows"]
        elif psycopg is None and self._conn is None and pgread.available():
            fast = self._load_fast()
            if fast is None:
                return State(lineage="")   # nothing written yet: no tables until the first write
            rows = fast
        else:
            try:
                rows = self.conn.execute(self.LOAD).fetchall()
            except psycopg.errors.UndefinedTable:
                return State(lineage="")       # nothing written yet: no tables until the first write
            except psycopg.Error as exc:
                raise self._lost(exc, "reading the state") from None
        self._seen = {}
        if not rows:
            return State(lineage="")
        lineage, serial, updated_at = rows[0][0], rows[0][1], rows[0][2]
        state = State(serial=serial, lineage=lineage, updated_at=updated_at)
        for row in rows:
            host, hserial, records, owned = row[3], row[4], row[5], row[6]
            if host is None:
                continue
            self._seen[host] = (hserial, (records, owned))
            if records:
                state.hosts[host] = {s: ServiceRecord.from_dict(r) for s, r in records.items()}
            if owned:
                state.owned[host] = [Owned.from_dict(o) for o in owned if isinstance(o, dict)]
        return state

    def save(self, state: State, bump: bool = True) -> None:
        """Write the hosts whose records changed since `load`, each only if its row is still at the serial
        it was read at (else StaleStateError: nothing is written); the state's serial goes up by one."""
        self.ensure_schema()
        if not state.lineage:
            state.lineage = str(uuid.uuid4())
        hosts = set(state.hosts) | set(state.owned) | set(self._seen)
        docs = {h: _host_doc(state.hosts.get(h, {}), state.owned.get(h, [])) for h in hosts}
        changed = sorted(h for h in hosts if h not in self._seen or not _same(self._seen[h][1], docs[h]))
        now = now_iso()
        try:
            with self.conn.transaction():
                row = self.conn.execute("SELECT lineage, serial FROM recon_state WHERE id = 1 FOR UPDATE").fetchone()
                if row is None:
                    self.conn.execute("INSERT INTO recon_state (lineage, serial, format_version, updated_at) "
                                      "VALUES (%s, 0, %s, %s)", (state.lineage, FORMAT_VERSION, now))
                    db_serial = 0
                elif row[0] != state.lineage:
                    raise StaleStateError(f"the state in {self.location} has lineage {row[0]}, not {state.lineage}: "
                                          "it is another state (nothing written)")
                else:
                    db_serial = row[1]
                serial = db_serial + 1 if (bump or changed) else db_serial
                for h in changed:
                    records, owned = docs[h]
                    if h in self._seen:
                        cur = self.conn.execute(
                            "UPDATE recon_host_state SET serial = %s, records = %s, owned = %s, updated_at = %s "
                            "WHERE host = %s AND serial = %s",
                            (serial, Jsonb(records), Jsonb(owned), now, h, self._seen[h][0]))
                    else:
                        cur = self.conn.execute(
                            "INSERT INTO recon_host_state (host, serial, records, owned, updated_at) "
                            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (host) DO NOTHING",
                            (h, serial, Jsonb(records), Jsonb(owned), now))
                    if cur.rowcount != 1:
                        read = self._seen[h][0] if h in self._seen else "none"
                        raise StaleStateError(
                            f"not saving the state of {h}: it moved on in {self.location} since it was read "
                            f"(read at serial {read}); another run wrote it. Nothing was written; run again")
                self.conn.execute("UPDATE recon_state SET serial = %s, updated_at = %s WHERE id = 1", (serial, now))
        except StateError:
            raise
        except psycopg.Error as exc:
            raise self._lost(exc, "saving the state") from None
        for h in changed:
            self._seen[h] = (serial, json.loads(json.dumps(docs[h])))
        state.serial = serial
        state.updated_at = now

    def replace(self, state: State) -> None:
        """Write `state` exactly (lineage, serial, every host): migrate and push, under the whole-state lock."""
        self.ensure_schema()
        now = state.updated_at or now_iso()
        try:
            with self.conn.transaction():
                self.conn.execute("DELETE FROM recon_host_state")
                self.conn.execute("DELETE FROM recon_state")
                self.conn.execute("INSERT INTO recon_state (lineage, serial, format_version, updated_at) "
                                  "VALUES (%s, %s, %s, %s)", (state.lineage, state.serial, FORMAT_VERSION, now))
                for h in sorted(set(state.hosts) | set(state.owned)):
                    records, owned = _host_doc(state.hosts.get(h, {}), state.owned.get(h, []))
                    self.conn.execute("INSERT INTO recon_host_state (host, serial, records, owned, updated_at) "
                                      "VALUES (%s, %s, %s, %s, %s)", (h, state.serial, Jsonb(records),
                                                                      Jsonb(owned), now))
        except psycopg.Error as exc:
            raise self._lost(exc, "writing the state") from None
        self.load()

    # --- history -------------------------------------------------------------------------------
    def append_history(self, entry: dict[str, Any]) -> None:
        self.append_many([entry])

    def append_many(self, entries: Sequence[dict[str, Any]], lineage: str | None = None) -> None:
        self.ensure_schema()
        try:
            if lineage is None:
                row = self.conn.execute("SELECT lineage FROM recon_state WHERE id = 1").fetchone()
                lineage = row[0] if row else ""
            with self.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO recon_history (lineage, at, by, machine, command, host, service, action, result, "
                    "serial, entry) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(lineage, str(e.get("time", "")), e.get("user"), e.get("machine"),
                      mask_url(str(e.get("command", ""))), e.get("host"), e.get("service"), e.get("action"),
                      e.get("result"), e.get("serial") if isinstance(e.get("serial"), int) else None,
                      Jsonb({k: mask_url(v) if isinstance(v, str) else v for k, v in e.items()}))
                     for e in entries])
        except psycopg.Error as exc:
            raise self._lost(exc, "appending to the history") from None

    def history(self) -> list[dict[str, Any]]:
        return self.read_history()[0]

    def read_history(self) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
        try:
            rows = self.conn.execute("SELECT id, entry FROM recon_history ORDER BY id").fetchall()
        except psycopg.errors.UndefinedTable:
            return [], []
        except psycopg.Error as exc:
            raise self._lost(exc, "reading the history") from None
        return split_history(rows)

    @property
    def history_path(self) -> str:
        return f"{self.location} (table recon_history)"

    # --- locks ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, command: str, timeout: float = 0.0, hosts: Sequence[str] | None = None
             ) -> Iterator[dict[str, Any]]:
        """Lock the hosts a run touches (None: the whole state), each by a session advisory lock on a
        connection of its own, so a holder that dies frees them when the server sees its socket close.
        Waits up to `timeout` s for each, then refuses naming the holder."""
        self.ensure_schema()
        me = {"id": str(uuid.uuid4()), "user": current_user(), "host": socket.gethostname(), "pid": os.getpid(),
              "time": now_iso(), "command": mask_url(command), "hosts": sorted(hosts) if hosts is not None else [ALL]}
        conn = self._lock_conn = self._connect("recon-lock")
        deadline = time.monotonic() + timeout
        try:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            keys: list[tuple[str, bool]] = [(ALL, hosts is not None)] + [(h, False) for h in sorted(set(hosts or []))]
            for name, shared in keys:
                fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
                while not conn.execute(f"SELECT {fn}(%s)", (lock_key(name),)).fetchone()[0]:  # type: ignore[index]
                    if time.monotonic() >= deadline:
                        holder = self._holder(conn, name) or {"id": "?", "note": "holder not recorded"}
                        what = "the whole state" if name == ALL else f"host {name}"
                        raise StateError(
                            f"{what} is locked in {self.location} by " + describe_holder(holder)
                            + f"; wait for it (--lock-timeout), or if it is gone: recon force-unlock "
                              f"{holder.get('id', '')}")
                    time.sleep(0.2)
                if shared:
                    continue
                conn.execute(
                    "INSERT INTO recon_locks (host, id, holder, machine, pid, command, since, backend_pid) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (host) DO UPDATE SET id = EXCLUDED.id, "
                    "holder = EXCLUDED.holder, machine = EXCLUDED.machine, pid = EXCLUDED.pid, "
                    "command = EXCLUDED.command, since = EXCLUDED.since, backend_pid = EXCLUDED.backend_pid",
                    (name, me["id"], me["user"], me["host"], me["pid"], me["command"], me["time"], backend))
        except psycopg.Error as exc:
            self._drop_lock_conn()
            raise self._lost(exc, "taking the lock") from None
        except BaseException:
            self._drop_lock_conn()
            raise
        try:
            yield me
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute("DELETE FROM recon_locks WHERE id = %s", (me["id"],))
            self._drop_lock_conn()

    def _drop_lock_conn(self) -> None:
        if self._lock_conn is not None:
            with contextlib.suppress(Exception):
                self._lock_conn.close()     # closing the session frees its advisory locks
        self._lock_conn = None

    @staticmethod
    def _row(r: Sequence[Any]) -> dict[str, Any]:
        return {"host_locked": r[0], "id": r[1], "user": r[2], "host": r[3], "pid": r[4], "command": r[5],
                "time": r[6], "backend_pid": r[7]}

    def _holder(self, conn: psycopg.Connection[Any], name: str) -> dict[str, Any] | None:
        r = conn.execute("SELECT host, id, holder, machine, pid, command, since, backend_pid FROM recon_locks "
                         "WHERE host = %s", (name,)).fetchone()
        if r is None and name == ALL:      # the whole state is held shared by per-host runs: name one of them
            r = conn.execute("SELECT host, id, holder, machine, pid, command, since, backend_pid FROM recon_locks "
                             "ORDER BY since LIMIT 1").fetchone()
        return self._row(r) if r else None

    def locks(self) -> list[dict[str, Any]]:
        """The live locks, one entry per holder with the hosts it holds (rows of dead sessions left out)."""
        try:
            rows = self.conn.execute(
                "SELECT l.host, l.id, l.holder, l.machine, l.pid, l.command, l.since, l.backend_pid FROM recon_locks l "
                "WHERE EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.backend_pid) ORDER BY l.since, l.host"
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return []
        except psycopg.Error as exc:
            raise self._lost(exc, "reading the locks") from None
        by_id: dict[str, dict[str, Any]] = {}
        for r in rows:
            h = by_id.setdefault(r[1], {**self._row(r), "hosts": []})
            h["hosts"].append(r[0])
        for h in by_id.values():
            h.pop("host_locked", None)
        return list(by_id.values())

    def force_unlock(self, lock_id: str | None) -> dict[str, Any]:
        """End the holder's lock session (pg_terminate_backend frees its advisory locks) and drop its rows."""
        held = self.locks()
        if not held:
            raise StateError(f"the state in {self.location} is not locked")
        if lock_id is None:
            if len(held) > 1:
                raise StateError("several runs hold locks; name one: "
                                 + "; ".join(describe_holder(h) for h in held))
            holder = held[0]
        else:
            found = [h for h in held if h["id"] == lock_id]
            if not found:
                raise StateError(f"no lock with id {lock_id}; held: " + "; ".join(describe_holder(h) for h in held))
            holder = found[0]
        try:
            self.conn.execute("SELECT pg_terminate_backend(%s)", (holder["backend_pid"],))
            self.conn.execute("DELETE FROM recon_locks WHERE id = %s", (holder["id"],))
        except psycopg.Error as exc:
            raise self._lost(exc, "removing the lock") from None
        return holder
