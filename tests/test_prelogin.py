"""`reconciler.prelogin`: `recon plan` (status, drift) starts the SSH logins the previous run with the same
command line and spec bytes observed, before the spec is parsed; a started login is used only for a host
whose checked spec fields are the ones it was started with, and nothing reaches a host before that check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hosttools import CANARY, Mini

from reconciler import prelogin
from reconciler.spec.model import Host
from testhosts import TestHost


def test_spec_files_are_read_from_the_command_line_as_click_reads_them() -> None:
    assert prelogin.spec_files(["-f", "a.yaml", "--file", "b.yaml", "--file=c.yaml", "-fd.yaml", "--host", "x"]) == [
        "a.yaml", "b.yaml", "c.yaml", "d.yaml"]
    assert prelogin.spec_files(["--host", "x"]) is None
    assert prelogin.spec_files(["-f"]) is None


def test_the_cache_key_follows_the_command_line_and_every_spec_byte(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("version: 1\n")
    key = prelogin.cache_key(["plan", "-f", "a.yaml"])
    assert key is not None and key == prelogin.cache_key(["plan", "-f", "a.yaml"])
    assert prelogin.cache_key(["plan", "-f", "a.yaml", "--host", "n1"]) != key
    assert prelogin.cache_key(["status", "-f", "a.yaml"]) not in (None, key)
    assert prelogin.cache_key(["logs", "-n", "50", "-f", "a.yaml"]) not in (None, key)
    assert prelogin.cache_key(["logs", "-f", "a.yaml", "--follow"]) is None   # streams through pyinfra
    assert prelogin.cache_key(["apply", "-f", "a.yaml"]) not in (None, key)   # observes like plan
    for other in (["apply", "saved.plan"], ["plan", "-f", "a.yaml", "--help"], ["plan", "-f", "gone.yaml"], []):
        assert prelogin.cache_key(other) is None, other
    (tmp_path / "a.yaml").write_text("version: 1 \n")
    assert prelogin.cache_key(["plan", "-f", "a.yaml"]) != key


def test_a_login_started_with_other_fields_is_ended_not_used() -> None:
    h = Host("node1", "10.0.0.5", user="root", ssh_key="/k/id", known_hosts="/k/known")
    same = prelogin.fields_of(h)
    for fields, timeout, used in ((same, 10, True), ({**same, "user": "x"}, 10, False), (same, 3, False)):
        p = subprocess.Popen(["sleep", "30"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        prelogin._started["node1"] = (fields, p)
        got = prelogin.take("node1", h, timeout)
        assert (got is p) == used and (p.poll() is None) == used, (fields, timeout)
        p.kill()
        p.wait()
    p = subprocess.Popen(["sleep", "30"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    prelogin._started["other"] = ({}, p)   # type: ignore[assignment]
    prelogin.discard()
    assert prelogin._started == {} and p.poll() is not None


def test_the_records_are_kept_to_the_newest(tmp_path: Path) -> None:
    for i in range(5):
        p = tmp_path / f"{i}.json"
        p.write_text("{}")
        os.utime(p, (1000 + i, 1000 + i))
    prelogin._prune(tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.json", "3.json", "4.json"]


PROBE = """
import json, sys
from reconciler import prelogin
prelogin.start(sys.argv[1:])
started = sorted(prelogin._started)
spawned = []
spawn = prelogin.spawn
prelogin.spawn = lambda *a, **k: spawned.append(1) or spawn(*a, **k)
from reconciler.cli import main
try:
    main(sys.argv[1:], prog_name="recon")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"started": started, "spawned": len(spawned), "left": sorted(prelogin._started)}), file=sys.stderr)
sys.exit(code)
"""


def _probe(m: Mini, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    spec = m.write()
    res = subprocess.run([sys.executable, "-c", PROBE, *args, "-f", str(spec), "--state", str(m.dir / "state")],
                         cwd=m.dir, env=env, capture_output=True, text=True, timeout=120)
    return res, json.loads(res.stderr.strip().splitlines()[-1])


@pytest.mark.host
def test_a_second_plan_uses_the_logins_started_before_its_spec_was_read(testhost: TestHost, tmp_path: Path,
                                                                       artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    cache = tmp_path / "cache"
    env = {**os.environ, "VAULT_TOKEN": CANARY, "NO_COLOR": "1", "XDG_CACHE_HOME": str(cache)}
    env.pop("RECON_NO_CACHE", None)
    first, seen = _probe(m, env, "plan", "--detailed-exitcode")
    assert first.returncode == 0 and seen == {"started": [], "spawned": 1, "left": []}, (first.stderr, seen)
    entries = list((cache / "recon/logins").iterdir())
    assert len(entries) == 1 and CANARY not in entries[0].read_text()
    assert json.loads(entries[0].read_text())["hosts"]["node1"]["address"] == testhost.address
    second, seen = _probe(m, env, "plan", "--detailed-exitcode")
    assert second.returncode == 0 and seen == {"started": ["node1"], "spawned": 0, "left": []}, (second.stderr, seen)
    assert second.stdout == first.stdout
    # a run that fails before observing (a secret missing) ends the login it started, and says why
    broken, seen = _probe(m, {k: v for k, v in env.items() if k != "VAULT_TOKEN"}, "plan", "--detailed-exitcode")
    assert broken.returncode == 1 and "VAULT_TOKEN" in broken.stderr and seen["left"] == [], broken.stderr
    # `recon logs` (no --follow) reads through the same early login: its second run starts it at once
    logs1, seen = _probe(m, env, "logs", "-n", "5")
    assert logs1.returncode == 0 and seen == {"started": [], "spawned": 1, "left": []}, (logs1.stderr, seen)
    logs2, seen = _probe(m, env, "logs", "-n", "5")
    assert logs2.returncode == 0 and seen == {"started": ["node1"], "spawned": 0, "left": []}, (logs2.stderr, seen)
    assert logs1.stdout.strip() and logs2.stdout.strip(), (logs1.stdout, logs2.stdout)
    # a converged `recon apply` observes like plan: its second run too uses the login started before its spec
    apply1, seen = _probe(m, env, "apply", "--auto-approve")
    assert apply1.returncode == 0 and seen == {"started": [], "spawned": 1, "left": []}, (apply1.stderr, seen)
    apply2, seen = _probe(m, env, "apply", "--auto-approve")
    assert apply2.returncode == 0 and seen == {"started": ["node1"], "spawned": 0, "left": []}, (apply2.stderr, seen)
    assert "No changes" in apply2.stdout, apply2.stdout
    # RECON_NO_CACHE: nothing started, nothing written
    off, seen = _probe(m, {**env, "RECON_NO_CACHE": "1"}, "plan", "--detailed-exitcode")
    assert off.returncode == 0 and seen["started"] == [] and seen["spawned"] == 1, seen
