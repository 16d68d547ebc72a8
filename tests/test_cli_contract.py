"""The command-line contract every command shares, as a user (or a CI job) meets it: usage errors exit 1
(2 is only "changes" under --detailed-exitcode), misspelt commands and names get suggestions, read-only
commands write nothing. Real subprocesses of the installed `recon`; no test host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECON = str(Path(sys.executable).with_name("recon"))
SPEC = ["-f", "specs/platform.yaml", "-f", "specs/overrides/local.yaml"]


def recon(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "NO_COLOR": "1", **(env or {})}
    return subprocess.run([RECON, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=60)


def commands() -> list[str]:
    from reconciler.cli import main

    return sorted(main.commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", commands())
def test_an_unknown_option_exits_1_for_every_command(command: str) -> None:
    res = recon(command, "--no-such-option")
    assert res.returncode == 1, (command, res.returncode, res.stderr)
    assert "No such option" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("args", [
    ["plan", "--detailed-exitcode"],                                    # no -f
    ["plan", *SPEC, "--detailed-exitcode", "--fromat", "json"],        # a typo in a flag
    ["plan", *SPEC, "--detailed-exitcode", "--format", "yaml"],        # a bad choice
    ["drift", "--detailed-exitcode"],
    ["diff", "--format", "markdown"],                                   # missing BASE HEAD
    ["apply", *SPEC, "--lock-timeout", "soon"],                         # not a number
    ["plna", *SPEC],                                                    # no such command
])
def test_usage_errors_exit_1_never_2(args: list[str]) -> None:
    res = recon(*args)
    assert res.returncode == 1, (args, res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr


def test_a_misspelt_command_or_option_gets_a_suggestion() -> None:
    assert "Did you mean 'plan'?" in recon("plna").stderr
    assert "--format" in recon("plan", *SPEC, "--fromat", "json").stderr


def test_help_and_version_exit_0() -> None:
    assert recon("--help").returncode == 0
    assert recon("plan", "--help").returncode == 0
    assert recon("--version").returncode == 0


def unreachable_spec(tmp_path: Path) -> None:
    """The platform on one host where nothing listens: every observation fails at once."""
    spec = yaml.safe_load((REPO / "specs/platform.yaml").read_text())
    for svc in spec["services"].values():
        svc["artifact"]["path"] = str((REPO / "specs" / svc["artifact"]["path"]).resolve())
    spec["hosts"] = {"node1": {"address": "127.0.0.1", "port": 1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))


def test_a_failed_plan_writes_nothing(tmp_path: Path) -> None:
    """Read-only commands write nothing: not even a state directory with a fresh lineage."""
    unreachable_spec(tmp_path)
    for args in (["plan", "-f", "spec.yaml"], ["plan", "-f", "spec.yaml", "--detailed-exitcode"],
                 ["drift", "-f", "spec.yaml"], ["status", "-f", "spec.yaml"], ["history"]):
        res = recon(*args, cwd=tmp_path, env={"VAULT_TOKEN": "x"})
        assert "Traceback" not in res.stderr, res.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"], (args, list(tmp_path.iterdir()))


def test_status_of_an_unreachable_host_lists_its_services(tmp_path: Path) -> None:
    unreachable_spec(tmp_path)
    res = recon("status", "-f", "spec.yaml", cwd=tmp_path, env={"VAULT_TOKEN": "x", "COLUMNS": "200"})
    assert res.returncode == 1
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith("node1 ")]
    assert len(rows) == 9 and all("unreachable" in ln for ln in rows), res.stdout
    assert "0/9 services healthy" in res.stdout and "cannot connect" in res.stdout
    doc = json.loads(recon("status", "-f", "spec.yaml", "--format", "json", cwd=tmp_path,
                           env={"VAULT_TOKEN": "x"}).stdout)
    assert [r["state"] for r in doc["services"]] == ["unreachable"] * 9
    assert all("cannot connect" in r["error"] for r in doc["services"])


def test_misspelt_service_and_host_names_get_suggestions_and_exit_1(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "history.jsonl").write_text(json.dumps({"service": "control-center", "host": "node1", "serial": 1,
                                                     "action": "create", "result": "created"}) + "\n")
    cases = [
        (["rollback", "control-centre", *SPEC, "--state", str(state)], "Did you mean 'control-center'"),
        (["history", "control-centre", "--state", str(state)], "Did you mean 'control-center'"),
        (["explain", "orchestrator.limits.memory_mx", *SPEC], "Did you mean 'memory_max'"),
        (["explain", "orchestrater.port", *SPEC], "Did you mean 'orchestrator'"),
        (["plan", *SPEC, "--target", "control-centre"], "Did you mean 'control-center'"),
        (["plan", *SPEC, "--host", "node"], "Did you mean 'node1'"),
        (["status", *SPEC, "--host", "nod1"], "Did you mean 'node1'"),
    ]
    for args, hint in cases:
        res = recon(*args, env={"VAULT_TOKEN": "x"})
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert hint in res.stderr, (args, res.stderr)
    # a name recon knows from its state but with no history yet is no error
    assert recon("history", "control-center", "--state", str(state)).returncode == 0


@pytest.mark.parametrize("command", commands())
def test_every_option_of_every_command_has_help_text(command: str) -> None:
    import click

    from reconciler.cli import main

    cmd = main.commands[command]  # type: ignore[attr-defined]
    bare = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and not p.help]
    assert not bare, f"recon {command}: options without help: {bare}"
    assert cmd.help and "Example" in cmd.help, f"recon {command} --help has no examples"
