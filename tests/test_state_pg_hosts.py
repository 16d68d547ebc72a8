"""Shared state in a real PostgreSQL server, with real hosts over SSH: two working directories share one
state; applies on disjoint hosts run at once while one on the same host is refused naming the holder; a
killed holder's locks free within seconds; a database connection lost mid-apply stops it before its next
wave, keeps the records in a fallback directory, and the next apply converges; no secret in a pg_dump."""

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
from hosttools import CANARY, Mini, recon

from reconciler.pgstate import PgStore, lock_key
from testhosts import TestHost


def _popen(m: Mini, *args: str) -> subprocess.Popen[str]:
    spec = m.write()
    env = {**os.environ, "VAULT_TOKEN": CANARY, "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "reconciler", *args, "-f", str(spec), "--state", m.state],
                            cwd=m.dir, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _change(m: Mini) -> None:
    """A change in every wave: orchestrator and control-center to 5.0.1, mcp-server's config."""
    m.versions["orchestrator"] = m.versions["control-center"] = "5.0.1"
    m.config_extra["mcp-server"] = {"tuning": {"round": 1}}


def _wait(cond: Any, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _locked(url: str, host: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT EXISTS (SELECT 1 FROM recon_locks l JOIN pg_locks p ON p.pid = l.backend_pid "
                            "AND p.locktype = 'advisory' AND p.granted WHERE l.host = %s)",
                            (host,)).fetchone() == (True,)


def test_apply_in_one_directory_plan_and_history_from_another_with_only_the_url(
        testhost: TestHost, tmp_path: Path, artifacts: Any, pg_url: str, pg_server: Any) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    m = Mini(one, [testhost], artifacts)
    m.state = pg_url
    m.apply()
    assert not (one / "state").exists()                      # nothing went to the directory backend
    spec = m.write()
    env = {"RECON_STATE": pg_url}
    res = recon("plan", "-f", str(spec), "--detailed-exitcode", cwd=two, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No changes" in res.stdout
    hist = recon("history", "--format", "json", cwd=two, env=env, check=0)
    entries = json.loads(hist.stdout)
    assert {(e["host"], e["service"], e["action"], e["result"]) for e in entries} == {
        ("node1", n, "create", "created") for n in ("orchestrator", "control-center", "mcp-server")}
    assert not (two / "state").exists()
    dump = pg_server.dump(pg_url.rsplit("/", 1)[1])
    assert "recon_host_state" in dump and "control-center" in dump      # the dump holds the state…
    assert CANARY not in dump                                           # …and never the secret


def test_applies_on_disjoint_hosts_overlap_and_a_third_on_the_same_host_is_refused_naming_the_holder(
        make_testhosts: Any, tmp_path: Path, artifacts: Any, pg_url: str) -> None:
    hosts = make_testhosts(2)
    m = Mini(tmp_path, hosts, artifacts)
    m.state = pg_url
    m.apply()
    _change(m)
    a = _popen(m, "apply", "--auto-approve", "--host", "node1")
    b = _popen(m, "apply", "--auto-approve", "--host", "node2")
    assert _wait(lambda: _locked(pg_url, "node1") and _locked(pg_url, "node2")), "both did not hold their locks"
    third = recon("apply", "--auto-approve", "--host", "node1", "--lock-timeout", "1", "-f", str(m.write()),
                  "--state", pg_url, cwd=tmp_path)
    out_a, out_b = a.communicate(timeout=300)[0], b.communicate(timeout=300)[0]
    assert a.returncode == 0, out_a
    assert b.returncode == 0, out_b                # --lock-timeout 0: it never waited for node1's apply
    assert third.returncode == 1, third.stdout + third.stderr
    assert "host node1 is locked" in third.stderr and "recon apply" in third.stderr and "lock id" in third.stderr
    assert f"pid {a.pid}" in third.stderr, third.stderr
    hist = [e for e in PgStore(pg_url).history() if e["to"] == "5.0.1"]
    span = {h: (min(e["time"] for e in hist if e["host"] == h), max(e["time"] for e in hist if e["host"] == h))
            for h in ("node1", "node2")}
    assert max(s for s, _ in span.values()) < min(e for _, e in span.values()), f"no overlap: {span}"
    state = PgStore(pg_url).load()
    assert all(state.record(h, n).version == v for h in ("node1", "node2") for n, v in m.versions.items())  # type: ignore[union-attr]
    m.run("plan", "--detailed-exitcode", check=0)


def test_kill_9_of_the_lock_holder_frees_the_lock_within_seconds(
        testhost: TestHost, tmp_path: Path, artifacts: Any, pg_url: str) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.state = pg_url
    m.apply()
    _change(m)
    proc = _popen(m, "apply", "--auto-approve")
    assert _wait(lambda: _locked(pg_url, "node1"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert _wait(lambda: conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key("node1"),)).fetchone()[0],
                     timeout=10)
        freed = time.monotonic() - t0
        conn.execute("SELECT pg_advisory_unlock_all()")
    assert freed < 5, f"{freed:.1f}s"
    res = m.run("apply", "--auto-approve", check=0)        # --lock-timeout 0: the lock is free at once
    assert "locked" not in res.stdout + res.stderr
    m.run("plan", "--detailed-exitcode", check=0)


def test_a_lost_database_connection_stops_the_apply_before_its_next_wave_and_the_next_apply_converges(
        testhost: TestHost, tmp_path: Path, artifacts: Any, pg_url: str, pg_server: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.state = pg_url
    m.apply()
    _change(m)                                                 # three waves: orchestrator, control-center, mcp
    before = len(PgStore(pg_url).history())
    proc = _popen(m, "apply", "--auto-approve")
    assert _wait(lambda: len(PgStore(pg_url).history()) > before), "the first wave never finished"
    db = pg_url.rsplit("/", 1)[1]
    pg_server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   f"WHERE datname = '{db}' AND application_name IN ('recon', 'recon-lock')")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, out
    assert "the state's store was lost" in out and "lost the state database" in out, out
    assert "not started: the state's store was lost" in out, out          # a later wave did not start
    assert "mcp-server" in out
    fallback = [p for p in tmp_path.iterdir() if p.name.startswith("recon-fallback-")]
    assert len(fallback) == 1 and str(fallback[0]) in out, out
    kept = json.loads((fallback[0] / "recon.state.json").read_text())
    assert kept["hosts"]["node1"]["orchestrator"]["version"] == "5.0.1"    # the record of what was done
    res = m.apply(check=0)                                                 # the next apply converges
    assert "mcp-server" in res.stdout
    m.run("plan", "--detailed-exitcode", check=0)
    state = PgStore(pg_url).load()
    assert all(state.record("node1", n).version == v for n, v in m.versions.items())  # type: ignore[union-attr]
