"""The README's newcomer path, as written: the demo (scripts/demo.sh, on its real systemd host at
127.0.20.1), then every `$ recon …` line of the README's tour, parsed from README.md, run as written from
the checkout, each checked against what the README says it does."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from testhosts import TestHosts

REPO = Path(__file__).resolve().parents[1]
DEMO = ["--dir", "/tmp/recon-demo", "--net", "127.0.20", "--prefix", "rdemo"]

# What each tour line must do (exit code, text in its output), keyed by the start of the line.
EXPECT: list[tuple[str, int | tuple[int, ...], str]] = [
    ("recon validate", 0, "Valid: 9 services on 1 host"),
    ("recon explain", 0, "set by    specs/overrides/local.yaml:25:14"),
    ("recon plan -f specs/platform.yaml -f specs/overrides/local.yaml -f specs/overrides/upgrade.yaml", 0,
     "Saved the plan to upgrade.plan"),
    ("recon plan -f specs/platform.yaml -f specs/overrides/local.yaml --detailed-exitcode", 2, "1 to replace"),
    ("recon plan", 0, "No changes"),
    ("recon status", 0, "9/9 services healthy"),
    ("recon apply upgrade.plan", 0, "replaced 5.0.0 → 5.0.1, healthy"),
    ("recon rollback control-center", 0, "rolled back to 5.0.0, healthy"),
    ("recon drift", 0, "No drift"),
    ("recon history control-center", 0, "5.0.1 → 5.0.0"),
    ("recon diff HEAD WORKTREE", (0, 2), "recon diff: HEAD")   # 2 when the checkout has changes,
]


def tour() -> list[tuple[str, list[str]]]:
    """Each `$ recon` line of the tour (its comment cut) with the output lines the README shows under it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## A short tour", 1)[1].split("```console", 1)[1].split("```", 1)[0]
    out: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            out.append((re.sub(r"\s+#\s.*$", "", line[2:]).strip(), []))
        elif out and line.strip() and line.strip() != "...":
            out[-1][1].append(line.strip())
    return [(cmd, shown) for cmd, shown in out if cmd.startswith("recon ")]


def tour_lines() -> list[str]:
    return [cmd for cmd, _ in tour()]


def expectation(line: str) -> tuple[tuple[int, ...], str]:
    for prefix, code, text in EXPECT:
        if line.startswith(prefix):
            return (code if isinstance(code, tuple) else (code,)), text
    raise AssertionError(f"README tour line without an expectation in this test: {line}")


def test_tour_lines_all_have_expectations() -> None:
    lines = tour_lines()
    assert len(lines) >= 10
    for line in lines:
        expectation(line)


@pytest.mark.host
def test_readme_tour_runs_as_written_after_the_demo() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VAULT_TOKEN", "RECON_STATE_DIR", "RECON_STATE")}
    env.update({"RECON_DEMO_SKIP_SETUP": "1", "NO_COLOR": "1",
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"})
    hosts = TestHosts(*DEMO[1::2])
    try:
        demo = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert "9/9 services healthy" in demo.stdout
        (REPO / "upgrade.plan").unlink(missing_ok=True)
        for line, shown in tour():
            codes, text = expectation(line)
            res = subprocess.run(shlex.split(line), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            out = res.stdout + res.stderr
            assert res.returncode in codes, f"$ {line}\nexit {res.returncode}, README says {codes}\n{out}"
            assert text in out, f"$ {line}\nwant {text!r} in:\n{out}"
            assert "Traceback" not in out
            for want in shown:                                  # what the README shows it prints
                assert want in out, f"$ {line}\nthe README shows {want!r}; the output was:\n{out}"
    finally:
        (REPO / "upgrade.plan").unlink(missing_ok=True)
        hosts.down()
