"""Secrets and unit escaping on a real systemd host (nspawn, over SSH, through `recon apply`):

- generated secret values (and `env:` values and args) reach a real stand-in byte-exact, checked by the
  sha256 it reports for them (`[standin] report_env`, `--label`), or are refused before anything is touched;
- another user never reads an env file while recon creates it;
- `%H` in a description stays literal for systemd, and a hand-edited unit line holding U+2028 is one line
  for the plan as it is for systemd.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from hosttools import TestHost, _exec, _run_in, recon
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

N_SECRETS = 8
PORT = 8090


def _service(name: str, artifacts: Any, port: int, **extra: Any) -> dict[str, Any]:
    path, sha = artifacts[("orchestrator", "5.0.0")]
    return {
        "version": "5.0.0",
        "artifact": {"path": str(path), "sha256": sha},
        "port": port,
        "type": "notify",
        "args": ["--config", "{config_path}"],
        "restart": {"policy": "on-failure", "delay_s": 1},
        "health": {"http": "http://{address}:{port}/health", "timeout_s": 8, "interval_s": 0.2},
        "config": {"server": {"host": "{address}", "port": port}, **extra.pop("config", {})},
        **extra,
    }


def _write_spec(tmp: Path, host: TestHost, services: dict[str, Any]) -> Path:
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "hosts": {"node1": host.spec_entry()}, "services": services},
                                   sort_keys=False))
    return path


def _recon(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return recon(*args, "-f", str(tmp / "spec.yaml"), "--state", str(tmp / "state"), cwd=tmp, env=env)


def _env_report(host: TestHost, port: int) -> dict[str, Any]:
    return json.loads(_exec(host, f"curl -s -m 3 http://{host.address}:{port}/env"))


def _literal(text: str) -> str:
    """A spec string that expands to `text` (braces are placeholders)."""
    return text.replace("{", "{{").replace("}", "}}")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


# --- byte-exact delivery: a property test on one host -----------------------------------------------------------
_SPECIAL = ['"', "'", "\\", "$", "%", "#", ";", "`", "\r", "\n", "\t", " ", "=", "é", "€", "\u2028", "\x85",
            "\x1b", "\U0001f600", "%H", "$HOME", "${PATH}", "\\\n", "\\n", '\\"', "%%", "$$"]
_TEXT = st.lists(st.sampled_from(_SPECIAL) | st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
                 max_size=12).map("".join)
# `env:` values and args cannot hold NUL, LF or CR (refused by validation, see test_escaping.py)
_ONE_LINE = _TEXT.map(lambda s: s.replace("\n", "").replace("\r", ""))


@st.composite
def batches(draw: Any) -> dict[str, Any]:
    values = draw(st.lists(_TEXT, min_size=N_SECRETS, max_size=N_SECRETS))
    spoil = draw(st.sampled_from([None] * 5 + ["nul", "utf8"]))   # now and then one value systemd cannot carry
    if spoil:
        i = draw(st.integers(0, N_SECRETS - 1))
        cut = draw(st.integers(0, len(values[i])))
        values[i] = values[i][:cut] + ("\0" if spoil == "nul" else "\udcff") + values[i][cut:]
    return {"secrets": values, "env": draw(st.lists(_ONE_LINE, min_size=2, max_size=2)),
            "labels": draw(st.lists(_ONE_LINE, min_size=2, max_size=2))}


OBSERVED = {"secrets": ["tok\rINJECTED=yes-injected", "p\\ss", '"quoted"', "'x", "a\nb", "  both ends  ", "",
                        "$HOME %H `id` #c ;c"],
            "env": ["100% %H $HOME \\ \"q\"", "  \t\u2028 "], "labels": ["%H $HOME ;", "x\u2029\x85\"'\\"]}


def _from_file(i: int, value: str) -> bool:
    """Odd secrets, and every one holding a NUL (the environment cannot carry it), come from a file."""
    return i % 2 == 1 or "\0" in value


def _host_fingerprint(host: TestHost) -> str:
    return _exec(host, "sha256sum /etc/provisioning/sec.env /etc/systemd/system/provisioning-sec.service "
                       "2>&1; systemctl show -p MainPID,ActiveState provisioning-sec.service")


@settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=batches())
@example(batch=OBSERVED)
@example(batch={**OBSERVED, "secrets": [*OBSERVED["secrets"][:-1], "nul\0inside"]})
def test_generated_secrets_arrive_byte_exact_or_are_refused(testhost: TestHost, tmp_path: Path, artifacts: Any,
                                                            batch: dict[str, Any]) -> None:
    values: list[str] = batch["secrets"]
    names = [f"S{i}" for i in range(N_SECRETS)]
    secrets: dict[str, Any] = {}
    env: dict[str, str] = {}
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        if _from_file(i, value):
            f = tmp_path / f"secret-{name}"
            f.write_bytes(value.encode("utf-8", "surrogateescape") + b"\n")   # its one final newline is dropped
            secrets[name] = {"from_file": str(f)}
        else:
            env[f"RECON_TEST_{name}"] = value
            secrets[name] = {"from_env": f"RECON_TEST_{name}"}
    spec_env = {f"E{i}": _literal(v) for i, v in enumerate(batch["env"])}
    svc = _service("sec", artifacts, PORT, secrets=secrets, env=spec_env,
                   config={"standin": {"report_env": [*names, *spec_env]}})
    svc["args"] = ["--config", "{config_path}", *(f"--label={_literal(v)}" for v in batch["labels"])]
    _write_spec(tmp_path, testhost, {"sec": svc})

    before = _host_fingerprint(testhost)
    res = _recon(tmp_path, "apply", "--auto-approve", env=env)
    out = res.stdout + res.stderr
    for v in values:
        if len(v) >= 8 and len(set(v)) >= 4:
            assert v not in out, "a secret value was printed"
    bad = [(n, v) for n, v in zip(names, values, strict=True) if "\0" in v or "\udcff" in v]
    event("refused" if bad else "delivered")
    if bad:
        assert res.returncode == 1, out
        assert "services.sec" in res.stderr and f"{bad[0][0]} " in res.stderr, out
        assert _host_fingerprint(testhost) == before, "a refused apply touched the host"
        return
    assert res.returncode == 0, out
    report = _env_report(testhost, PORT)
    want = {n: _sha(v) for n, v in zip(names, values, strict=True)}
    want |= {f"E{i}": _sha(v) for i, v in enumerate(batch["env"])}
    got = report["env_sha256"]
    wrong = sorted(n for n in want if got.get(n) != want[n])
    assert not wrong, f"not delivered byte-exact: {wrong} of {batch!r}"
    assert report["labels_sha256"] == [_sha(v) for v in batch["labels"]], f"args altered: {batch['labels']!r}"
    assert _exec(testhost, "stat -c '%a %U %G' /etc/provisioning/sec.env").split() == ["600", "root", "root"]
    plan = _recon(tmp_path, "plan", "--detailed-exitcode", env=env)
    assert plan.returncode == 0, plan.stdout + plan.stderr


# --- never readable by another user while created ------------------------------------------------------------
_READER = r"""
import glob, os, sys
n = 0
while not os.path.exists("/run/reader.stop"):
    n += 1
    for p in glob.glob("/etc/provisioning/*") + glob.glob("/etc/provisioning/.*") + glob.glob("/tmp/*"):
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if b"canary-" in data:
            print("READ", p, flush=True)
print("ROUNDS", n, flush=True)
"""


def test_env_files_are_never_readable_by_others_while_created(testhost: TestHost, tmp_path: Path,
                                                              artifacts: Any) -> None:
    """A loop running as `nobody` on the host tries to read every file in the config directory (and /tmp)
    while recon creates five services with secrets. Before the fix it read sec1.env: pyinfra's files.put
    wrote it with the default mode (0644), then chmodded it."""
    services = {f"sec{i}": _service(f"sec{i}", artifacts, PORT + i, secrets={"API_TOKEN": {"from_env": f"TOK{i}"}})
                for i in range(1, 6)}
    _write_spec(tmp_path, testhost, services)
    env = {f"TOK{i}": f"canary-{i}-Jm4q" for i in range(1, 6)}
    _exec(testhost, "mkdir -p /etc/provisioning && rm -f /run/reader.stop")
    reader = subprocess.Popen(
        ["nsenter", "-t", str(testhost.leader_pid), "-a", "--", "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
         "sh", "-c", f"exec runuser -u nobody -- python3 -c '{_READER}'"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        res = _recon(tmp_path, "apply", "--auto-approve", env=env)
        # and while they are updated (the old file is kept beside it as .prev)
        env2 = {k: v + "-v2" for k, v in env.items()}
        res2 = _recon(tmp_path, "apply", "--auto-approve", env=env2) if res.returncode == 0 else res
    finally:
        _run_in(testhost, "touch /run/reader.stop")
        seen, _ = reader.communicate(timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res2.returncode == 0 and "5 updated" in res2.stdout, res2.stdout + res2.stderr
    rounds = [int(line.split()[1]) for line in seen.splitlines() if line.startswith("ROUNDS")]
    assert rounds and rounds[0] > 50, f"the reader did not run: {seen!r}"
    assert "READ" not in seen, f"another user read a secret while it was written:\n{seen}"
    for i in range(1, 6):
        for f in (f"sec{i}.env", f"sec{i}.env.prev"):
            assert _exec(testhost, f"stat -c '%a %U' /etc/provisioning/{f}").split() == ["600", "root"]
    assert _exec(testhost, "ls -a /etc/provisioning | grep -c recon- || true").strip() == "0"   # no temp file left
    assert _env_report(testhost, PORT + 1)["env_sha256"] == {}       # (report_env not set: nothing reported)


# --- unit escaping: %H and U+2028 ------------------------------------------------------------------------------
def test_specifiers_stay_literal_and_a_unit_line_stays_one_line(testhost: TestHost, tmp_path: Path,
                                                               artifacts: Any) -> None:
    svc = _service("desc", artifacts, PORT, description="100% up on %H, as $USER")
    _write_spec(tmp_path, testhost, {"desc": svc})
    res = _recon(tmp_path, "apply", "--auto-approve")
    assert res.returncode == 0, res.stdout + res.stderr
    shown = _exec(testhost, "systemctl show -p Description provisioning-desc.service").strip()
    assert shown == "Description=Provisioning desc (100% up on %H, as $USER)"
    assert _recon(tmp_path, "plan", "--detailed-exitcode").returncode == 0

    # A hand edit puts U+2028 and an ExecStartPre= into the Description line: for systemd that stays one
    # line (no ExecStartPre), and so it does for the plan (one changed description, no `unit.ExecStartPre`).
    unit = "/etc/systemd/system/provisioning-desc.service"
    _exec(testhost, f"sed -i 's|^Description=.*|Description=evil\u2028ExecStartPre=/bin/touch /tmp/pwned|' {unit} "
                    "&& systemctl daemon-reload")
    assert _exec(testhost, "systemctl show -p ExecStartPre --value provisioning-desc.service").strip() == ""
    plan = _recon(tmp_path, "plan", "--detailed-exitcode", "--format", "json")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    changes = json.loads(plan.stdout)["changes"]
    fields = [f["path"] for c in changes for f in c["fields"]]
    assert fields == ["description (Description)"], fields
    assert "unit.ExecStartPre" not in _recon(tmp_path, "plan").stdout
    assert _recon(tmp_path, "apply", "--auto-approve").returncode == 0
    assert _exec(testhost, "systemctl show -p Description --value provisioning-desc.service").strip() == (
        "Provisioning desc (100% up on %H, as $USER)")
