"""The PostgreSQL state backend against a real server (tests/pgserver.py, no hosts): compare-and-swap writes,
per-host advisory locks that die with their holder, force-unlock, migrate, pull/push, show, password masking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgserver import PASSWORD

from reconciler.pgstate import PgStore, lock_key
from reconciler.state import RecordStatus, ServiceRecord, StaleStateError, State, StateError, StateStore, open_store

REPO = Path(__file__).resolve().parents[1]


def rec(version: str, env_hash: str | None = None) -> ServiceRecord:
    return ServiceRecord(version=version, sha256="a" * 64, config_sha="c", unit_sha="u", env_hash=env_hash,
                         config_text="x = 1\n", unit_text="[Unit]\n", service_dir="/opt/p/api",
                         config_path="/etc/p/api.toml", unit_name="p-api.service", env_path="/etc/p/api.env",
                         status=RecordStatus.APPLIED, applied_at="2026-12-02T00:00:00Z", serial=1)


def recon(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "NO_COLOR": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "reconciler", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=120)


def seeded(url: str) -> PgStore:
    store = PgStore(url)
    st = store.load()
    st.hosts["node1"] = {"api": rec("1.0")}
    st.hosts["node2"] = {"api": rec("1.0")}
    store.save(st)
    return store


def test_a_stale_compare_and_swap_write_is_refused_and_nothing_is_written(pg_url: str) -> None:
    seeded(pg_url)
    a, b = PgStore(pg_url), PgStore(pg_url)
    sa, sb = a.load(), b.load()
    sa.hosts["node1"]["api"] = rec("2.0")
    a.save(sa)
    sb.hosts["node1"]["api"] = rec("3.0")            # read before a's write: stale
    sb.hosts["node2"]["api"] = rec("3.0")
    with pytest.raises(StaleStateError, match="node1: it moved on"):
        b.save(sb)
    now = PgStore(pg_url).load()
    assert now.record("node1", "api").version == "2.0"   # type: ignore[union-attr]
    assert now.record("node2", "api").version == "1.0"   # type: ignore[union-attr]  # the whole write was refused
    assert now.serial == sa.serial == 2


def test_writes_to_disjoint_hosts_both_land_and_the_serial_counts_both(pg_url: str) -> None:
    seeded(pg_url)
    a, b = PgStore(pg_url), PgStore(pg_url)
    sa, sb = a.load(), b.load()
    sa.hosts["node1"]["api"] = rec("2.0")
    sb.hosts["node2"]["api"] = rec("2.1")
    a.save(sa)
    b.save(sb)           # read before a's write, but a wrote another host: no conflict
    now = PgStore(pg_url).load()
    assert (now.record("node1", "api").version, now.record("node2", "api").version) == ("2.0", "2.1")  # type: ignore[union-attr]
    assert now.serial == 3 and sb.serial == 3


def test_another_lineage_is_refused(pg_url: str) -> None:
    seeded(pg_url)
    other = PgStore(pg_url)
    st = State(lineage="another-lineage")
    st.hosts["node9"] = {"api": rec("1.0")}
    with pytest.raises(StaleStateError, match="lineage"):
        other.save(st)


def test_per_host_locks_disjoint_hosts_go_at_once_the_same_host_is_refused_naming_the_holder(pg_url: str) -> None:
    a, b, c = PgStore(pg_url), PgStore(pg_url), PgStore(pg_url)
    with a.lock("recon apply spec.yaml --host node1", hosts=["node1"]) as me, \
            b.lock("recon apply spec.yaml --host node2", hosts=["node2"]):
            t0 = time.monotonic()
            with pytest.raises(StateError) as exc, c.lock("third", timeout=1.0, hosts=["node1", "node3"]):
                pass
            assert time.monotonic() - t0 >= 1.0                 # it waited --lock-timeout
            text = str(exc.value)
            assert "host node1 is locked" in text and me["id"] in text and f"pid {os.getpid()}" in text
            assert "recon apply spec.yaml --host node1" in text and me["time"] in text
            with pytest.raises(StateError, match="locked"), c.lock("migrate", timeout=0):   # the whole state
                pass
            assert sorted(h for x in a.locks() for h in x["hosts"]) == ["node1", "node2"]
    with c.lock("third", hosts=["node1"]):                      # released: free again
        pass
    assert a.locks() == []


HOLDER = """
import sys, time
from reconciler.pgstate import PgStore
with PgStore(sys.argv[1]).lock("recon apply (holder)", hosts=["node1"]) as me:
    print(me["id"], flush=True)
    time.sleep(600)
"""


def _holder(url: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_kill_9_of_the_holder_frees_its_lock_within_seconds(pg_url: str) -> None:
    proc, lock_id = _holder(pg_url)
    assert lock_id
    with pytest.raises(StateError, match=lock_id), PgStore(pg_url).lock("next", hosts=["node1"]):
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    with PgStore(pg_url).lock("next", timeout=10, hosts=["node1"]) as me:
        waited = time.monotonic() - t0
        assert [x["id"] for x in PgStore(pg_url).locks()] == [me["id"]]   # the dead holder's row is gone
    assert waited < 5, f"the lock of a killed holder took {waited:.1f}s to free"


def test_force_unlock_ends_the_holders_session_and_frees_the_lock(pg_url: str) -> None:
    proc, lock_id = _holder(pg_url)
    try:
        res = recon("force-unlock", "not-the-id", "--state", pg_url)
        assert res.returncode == 1 and lock_id in res.stderr + res.stdout
        res = recon("force-unlock", lock_id, "--state", pg_url)
        assert res.returncode == 0, res.stderr
        assert lock_id in res.stdout and f"pid {proc.pid}" in res.stdout
        with PgStore(pg_url).lock("next", timeout=5, hosts=["node1"]):
            pass
        res = recon("force-unlock", "--state", pg_url)
        assert res.returncode == 1 and "not locked" in res.stderr
    finally:
        proc.kill()
        proc.wait()


def _dir_state(tmp: Path) -> StateStore:
    store = StateStore(tmp / "state")
    st = store.load()
    st.hosts["node1"] = {"api": rec("1.0", env_hash="salted-fingerprint")}
    store.save(st)
    for i in range(3):
        store.append_history({"time": f"2026-12-02T00:00:0{i}Z", "user": "ann", "machine": "m", "command": "apply",
                              "serial": 1, "host": "node1", "service": "api", "action": "create", "from": None,
                              "to": "1.0", "result": "applied", "detail": ""})
    return store


def test_migrate_dir_to_postgresql_and_back_round_trips_state_and_history(pg_url: str, tmp_path: Path) -> None:
    src = _dir_state(tmp_path)
    res = recon("state", "migrate", "--state", str(src.dir), "--to", pg_url)
    assert res.returncode == 0, res.stderr
    assert "3 of 3 history entries" in res.stdout
    pg = PgStore(pg_url)
    assert pg.load().to_json() == src.load().to_json()
    assert pg.history() == src.history()
    res = recon("state", "migrate", "--state", pg_url, "--to", str(tmp_path / "back"))
    assert res.returncode == 0, res.stderr
    back = StateStore(tmp_path / "back")
    assert back.path.read_bytes() == src.path.read_bytes()
    assert back.history() == src.history()
    # again: nothing copied twice
    res = recon("state", "migrate", "--state", str(src.dir), "--to", pg_url)
    assert res.returncode == 0 and "0 of 3 history entries" in res.stdout, res.stdout + res.stderr
    assert len(pg.history()) == 3


def test_migrate_refuses_a_target_with_another_lineage(pg_url: str, tmp_path: Path) -> None:
    seeded(pg_url)
    before = PgStore(pg_url).load().to_json()
    src = _dir_state(tmp_path)
    res = recon("state", "migrate", "--state", str(src.dir), "--to", pg_url)
    assert res.returncode == 1 and "another state (lineage" in res.stderr, res.stderr
    assert PgStore(pg_url).load().to_json() == before


def test_pull_and_push_check_lineage_and_serial(pg_url: str, tmp_path: Path) -> None:
    store = seeded(pg_url)
    res = recon("state", "pull", "--state", pg_url)
    assert res.returncode == 0, res.stderr
    backup = tmp_path / "backup.json"
    backup.write_text(res.stdout)
    assert json.loads(res.stdout)["serial"] == 1
    res = recon("state", "push", str(backup), "--state", pg_url)
    assert res.returncode == 0 and "nothing written" in res.stdout, res.stdout + res.stderr
    st = store.load()
    st.hosts["node1"]["api"] = rec("2.0")
    store.save(st)                                          # the database moves on: serial 2
    res = recon("state", "push", str(backup), "--state", pg_url)
    assert res.returncode == 1 and "older" in res.stderr, res.stderr
    assert PgStore(pg_url).load().record("node1", "api").version == "2.0"   # type: ignore[union-attr]
    other = tmp_path / "other.json"
    doc = json.loads(backup.read_text())
    doc["lineage"], doc["serial"] = "another", 99
    other.write_text(json.dumps(doc))
    res = recon("state", "push", str(other), "--state", pg_url)
    assert res.returncode == 1 and "another state" in res.stderr, res.stderr
    newer = json.loads(backup.read_text())
    newer["serial"] = 5
    backup.write_text(json.dumps(newer))
    res = recon("state", "push", str(backup), "--state", pg_url)
    assert res.returncode == 0, res.stderr
    now = PgStore(pg_url).load()
    assert now.serial == 5 and now.record("node1", "api").version == "1.0"   # type: ignore[union-attr]


def test_state_show_masks_the_secrets_fingerprint(pg_url: str, tmp_path: Path) -> None:
    src = _dir_state(tmp_path)
    assert recon("state", "migrate", "--state", str(src.dir), "--to", pg_url).returncode == 0
    for args in ((), ("--format", "json")):
        res = recon("state", "show", *args, env={"RECON_STATE": pg_url})
        assert res.returncode == 0, res.stderr
        assert "salted-fingerprint" not in res.stdout and "(sensitive)" in res.stdout
    doc = json.loads(recon("state", "show", "--format", "json", "--state", pg_url).stdout)
    assert doc["hosts"]["node1"]["api"]["version"] == "1.0" and doc["locks"] == []


def test_no_password_is_printed_anywhere(pg_server: Any, tmp_path: Path) -> None:
    with_pw = pg_server.url("no_such_db", password=True)
    for args in (("state", "show"), ("history",), ("force-unlock",), ("state", "pull")):
        res = recon(*args, "--state", with_pw, env={"PGPASSWORD": ""})
        assert res.returncode == 1, res
        assert PASSWORD not in res.stdout + res.stderr and "recon:***@" in res.stderr, res.stderr
    db = pg_server.new_database()
    res = recon("state", "migrate", "--state", str(_dir_state(tmp_path).dir), "--to", pg_server.url(db, password=True))
    assert res.returncode == 0 and PASSWORD not in res.stdout + res.stderr and "recon:***@" in res.stdout
    assert PASSWORD not in repr(PgStore(pg_server.url(db, password=True)))
    assert PASSWORD not in pg_server.dump(db)
    for args in (("state", "--help"), ("apply", "--help"), ("state", "migrate", "--help")):
        assert "postgresql://" in recon(*args).stdout and PASSWORD not in recon(*args).stdout


def test_the_schema_is_created_once_and_reads_need_no_tables(pg_url: str) -> None:
    assert PgStore(pg_url).load().lineage == "" and PgStore(pg_url).history() == []
    assert PgStore(pg_url).locks() == []
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('recon_state')").fetchone() == (None,)   # reads created nothing
    seeded(pg_url)
    PgStore(pg_url).ensure_schema()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM recon_schema").fetchall() == [(1,)]
        assert conn.execute("SELECT count(*) FROM recon_host_state").fetchone() == (2,)


def test_lock_keys_are_stable_and_distinct() -> None:
    assert lock_key("node1") == lock_key("node1") != lock_key("node2")
    assert -(2 ** 63) <= lock_key("node1") < 2 ** 63
    assert isinstance(open_store("state"), StateStore)


def test_a_plan_reads_the_state_through_libpq_without_importing_psycopg(pg_url: str) -> None:
    from reconciler import pgread

    seeded(pg_url)
    probe = ("import sys; from reconciler.pgstate import PgStore; st = PgStore(sys.argv[1]).load(); "
             "sys.stdout.write(st.to_json().decode()); print('psycopg' in sys.modules, file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", probe, pg_url], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.stderr.strip() == "False", res.stderr
    assert res.stdout == PgStore(pg_url).load().to_json().decode()     # the same state as through psycopg
    with pytest.raises(pgread.ReadError) as exc:
        pgread.query(pg_url, "SELECT * FROM no_such_table")
    assert exc.value.sqlstate == pgread.UNDEFINED_TABLE and exc.value.connected
    with pytest.raises(pgread.ReadError) as exc:
        pgread.query(pg_url.rsplit("/", 1)[0] + "/no_such_db", "SELECT 1")
    assert not exc.value.connected and "no_such_db" in str(exc.value)
    assert pgread.query(pg_url, "SELECT 1, NULL::text, 'x'") == [["1", None, "x"]]


@pytest.mark.parametrize("backend", ["postgresql", "directory"])
def test_apply_loads_the_spec_once_even_when_it_locks_per_host(pg_url: str, tmp_path: Path, backend: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # runner.lock_scope read the spec to know which hosts to lock, and pipeline.prepare read it again
    import hashlib

    import yaml

    from reconciler import pipeline, runner
    from reconciler import spec as spec_pkg
    from reconciler.errors import ReconError

    art = tmp_path / "api.bin"
    art.write_bytes(b"#!/bin/sh\n")
    artifact = {"path": str(art), "sha256": hashlib.sha256(art.read_bytes()).hexdigest()}
    doc = {"version": 1, "hosts": {"n1": {"address": "127.0.0.1", "port": 1}},     # nothing listens there
           "services": {"api": {"version": "1.0.0", "port": 8080, "artifact": artifact}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(doc))
    calls: list[tuple[str, ...]] = []
    real = spec_pkg.load_spec

    def counting(files: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(files))
        return real(files, *args, **kwargs)

    monkeypatch.setattr(spec_pkg, "load_spec", counting)        # what lock_scope imports
    monkeypatch.setattr(pipeline, "load_spec", counting)        # what prepare calls
    locked: list[Any] = []
    store = pipeline.open_store(pg_url if backend == "postgresql" else str(tmp_path / "st"))
    real_lock = store.lock

    def lock(*args: Any, **kwargs: Any) -> Any:
        locked.append(kwargs.get("hosts"))
        return real_lock(*args, **kwargs)

    monkeypatch.setattr(store, "lock", lock)
    monkeypatch.setattr(pipeline, "open_store", lambda _option: store)

    class UI:
        def show_plan(self, plan: Any) -> None: ...
        def confirm(self) -> None: ...
        def on_event(self, event: Any) -> None: ...

    req = runner.ApplyRequest(files=(str(tmp_path / "spec.yaml"),), auto_approve=True, state="unused")
    with pytest.raises(ReconError, match="could not be observed"):
        runner.run_apply(req, UI())
    assert calls == [(str(tmp_path / "spec.yaml"),)]
    assert locked == ([["n1"]] if backend == "postgresql" else [None])


def test_history_rows_that_are_not_entries_are_skipped_by_id_like_bad_lines_of_the_file(pg_url: str,
                                                                                        tmp_path: Path) -> None:
    good = {"time": "2026-01-02T03:04:05.000000Z", "user": "ops", "machine": "m", "command": "apply", "serial": 4,
            "host": "node1", "service": "api", "action": "create", "from": None, "to": "1.0.0", "result": "created",
            "detail": ""}
    bad = [[1, 2], {**good, "time": 5}, {**good, "serial": "4"}]
    store = PgStore(pg_url)
    store.append_many([good])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for entry in bad:
            conn.execute("INSERT INTO recon_history (lineage, at, entry) VALUES ('', '', %s)", (json.dumps(entry),))
    store.append_many([{**good, "to": "1.0.1"}])
    entries, skipped = PgStore(pg_url).read_history()
    assert [e["to"] for e in entries] == ["1.0.0", "1.0.1"]
    whys = ["not a history entry (found a list)", "time is a number 5, not text",
            'serial is a string "4", not a whole number']
    assert [why for _, why in skipped] == whys and [n for n, _ in skipped] == sorted(n for n, _ in skipped)
    # the directory backend says the same of the same entries, by line number
    (tmp_path / "history.jsonl").write_text("\n".join(json.dumps(e) for e in [good, *bad, good]) + "\n")
    file_entries, file_skipped = StateStore(str(tmp_path)).read_history()
    assert file_entries == [good, good] and file_skipped == list(zip([2, 3, 4], whys, strict=True))
