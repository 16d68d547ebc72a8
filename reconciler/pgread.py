"""One read-only query through libpq itself (ctypes), for the state read of a plan: importing psycopg costs
~100 ms, more than the rest of a converged plan's PostgreSQL work, and a plan only needs one SELECT.

libpq is the one psycopg[binary] bundles (else the system's libpq.so.5), so the connection behaves as
psycopg's does: the same URL, PGPASSWORD, ~/.pgpass, PGSSLMODE… Everything else (writes, locks, history)
goes through psycopg (`reconciler.pgstate`). Values come back as text, or None for NULL.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
from typing import Any

UNDEFINED_TABLE = "42P01"
_OK_TUPLES = 2           # PGRES_TUPLES_OK
_CONNECTION_OK = 0
_DIAG_SQLSTATE = ord("C")


class ReadError(Exception):
    def __init__(self, message: str, sqlstate: str | None = None, connected: bool = True) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.connected = connected


_lib: Any = None


def _libpq() -> Any:
    global _lib
    if _lib is not None:
        return _lib or None
    candidates: list[str] = []
    spec = importlib.util.find_spec("psycopg_binary")      # finds the package without importing it
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidates += sorted(glob.glob(os.path.join(os.path.dirname(loc), "psycopg_binary.libs", "libpq*.so*")))
    candidates.append("libpq.so.5")
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, res, args in (
                ("PQconnectdbParams", vp, [ctypes.POINTER(cp), ctypes.POINTER(cp), i]),
                ("PQstatus", i, [vp]), ("PQerrorMessage", cp, [vp]), ("PQfinish", None, [vp]),
                ("PQexec", vp, [vp, cp]), ("PQresultStatus", i, [vp]), ("PQresultErrorMessage", cp, [vp]),
                ("PQresultErrorField", cp, [vp, i]), ("PQntuples", i, [vp]), ("PQnfields", i, [vp]),
                ("PQgetvalue", cp, [vp, i, i]), ("PQgetisnull", i, [vp, i, i]), ("PQclear", None, [vp])):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        _lib = lib
        return lib
    _lib = False
    return None


def available() -> bool:
    return _libpq() is not None


def query(url: str, sql: str, application_name: str = "recon") -> list[list[str | None]]:
    """Run one parameterless SELECT; raise ReadError (with the SQLSTATE, and whether it connected)."""
    lib = _libpq()
    if lib is None:
        raise ReadError("libpq not found", connected=False)
    pairs = [("dbname", url), ("connect_timeout", "10"), ("application_name", application_name)]
    keys = (ctypes.c_char_p * (len(pairs) + 1))(*[k.encode() for k, _ in pairs], None)
    vals = (ctypes.c_char_p * (len(pairs) + 1))(*[v.encode() for _, v in pairs], None)
    conn = lib.PQconnectdbParams(keys, vals, 1)
    try:
        if lib.PQstatus(conn) != _CONNECTION_OK:
            raise ReadError((lib.PQerrorMessage(conn) or b"").decode(errors="replace").strip(), connected=False)
        res = lib.PQexec(conn, sql.encode())
        try:
            if lib.PQresultStatus(res) != _OK_TUPLES:
                state = lib.PQresultErrorField(res, _DIAG_SQLSTATE)
                raise ReadError((lib.PQresultErrorMessage(res) or b"").decode(errors="replace").strip(),
                                state.decode() if state else None)
            n, m = lib.PQntuples(res), lib.PQnfields(res)
            return [[None if lib.PQgetisnull(res, r, c) else lib.PQgetvalue(res, r, c).decode()
                     for c in range(m)] for r in range(n)]
        finally:
            lib.PQclear(res)
    finally:
        lib.PQfinish(conn)
