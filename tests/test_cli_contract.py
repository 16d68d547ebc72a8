"""The command-line contract every command shares, as a user (or a CI job) meets it: usage errors exit 1
(2 is only "changes" under --detailed-exitcode), misspelt commands and names get suggestions, read-only
commands write nothing. Real subprocesses of the installed `recon`; no test host."""

from __future__ import annotations

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


def test_a_failed_plan_writes_nothing(tmp_path: Path) -> None:
    """Read-only commands write nothing: not even a state directory with a fresh lineage."""
    spec = yaml.safe_load((REPO / "specs/platform.yaml").read_text())
    for svc in spec["services"].values():
        svc["artifact"]["path"] = str((REPO / "specs" / svc["artifact"]["path"]).resolve())
    spec["hosts"] = {"node1": {"address": "127.0.0.1", "port": 1}}   # nothing listens: observation fails
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    for args in (["plan", "-f", "spec.yaml"], ["plan", "-f", "spec.yaml", "--detailed-exitcode"],
                 ["drift", "-f", "spec.yaml"], ["status", "-f", "spec.yaml"], ["history"]):
        res = recon(*args, cwd=tmp_path, env={"VAULT_TOKEN": "x"})
        assert "Traceback" not in res.stderr, res.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"], (args, list(tmp_path.iterdir()))
