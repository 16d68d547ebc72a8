"""The project's own promises about itself (issue 8's nits): packaging metadata builds without
deprecations, setup installs every tool the tests use, nothing cites paths outside the repository, and the
commands written in the specs' comments exist."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_string_not_a_deprecated_table() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"


def test_setup_installs_each_tool_the_tests_use_when_it_alone_is_missing() -> None:
    setup = (REPO / "scripts/setup.sh").read_text()
    for tool, package in (("systemd-nspawn", "systemd-container"), ("curl", "curl"), ("strace", "strace"),
                          ("ssh-keygen", "openssh-client")):
        assert re.search(rf"command -v {re.escape(tool)} .*\|\| need\+=\({re.escape(package)}\)", setup), tool


def test_no_source_or_doc_cites_a_path_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in tracked.split():
        path = REPO / name
        if path.suffix not in (".py", ".md", ".sh", ".yaml", ".yml", ".toml") or name == "tests/test_project.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        assert "/work/" not in text and "shared/notes" not in text, name


def test_commands_in_the_spec_comments_exist() -> None:
    text = (REPO / "specs/overrides/local.yaml").read_text()
    assert "scripts/demo.sh" in text and "testhosts demo up" not in text
    assert (REPO / "scripts/demo.sh").is_file()
    res = subprocess.run([sys.executable, "-m", "testhosts", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "up" in res.stdout
