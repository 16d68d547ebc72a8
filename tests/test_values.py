"""Issue 7 section 4: values systemd would ignore are refused by `recon validate`, with file and line.

The boundaries are what systemd 252 and the kernel accept, measured on a test host (docs/design.md,
"Validation of values"). Pure: no host.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import SpecError
from reconciler.spec import load_spec

# measured on systemd 252 / Linux 6 (written out here, not imported, so the test states the numbers itself)
MAX_LIMIT_BYTES = 2**64 - 2
MAX_TASKS = 4_194_304
MAX_NOFILE = 2_147_483_584

BASE = """\
version: 1
hosts:
  node1: {address: 10.0.0.1}
services:
  api:
    version: "1.0.0"
    artifact: {url: "https://example.com/api", sha256: "%s"}
    port: 8080
""" % ("a" * 64)


def _spec(tmp_path: Path, section: str, key: str, value: str, name: str = "s.yaml") -> Path:
    """BASE with `section: {key: value}` under the service, as YAML text (so `.nan` stays YAML's)."""
    path = tmp_path / name
    path.write_text(BASE + f"    {section}:\n      {key}: {value}\n")
    return path


def _problems(path: Path) -> list[Any]:
    with pytest.raises(SpecError) as info:
        load_spec([str(path)], check_artifacts=False)
    return info.value.problems


OBSERVED = [  # the values of the issue that systemd ignored, and more of their kind
    ("limits", "memory_max", "0"), ("limits", "memory_max", '"0"'), ("limits", "memory_max", '"0K"'),
    ("limits", "memory_high", "0"), ("limits", "memory_max", "18446744073709551615"),
    ("limits", "memory_max", '"16777216T"'), ("limits", "memory_max", '"0.5"'),
    ("limits", "tasks_max", "0"), ("limits", "tasks_max", "1000000000000000000000000000000"),
    ("limits", "tasks_max", str(MAX_TASKS + 1)), ("limits", "tasks_max", '"0"'),
    ("limits", "cpu_quota", '"0%"'), ("limits", "cpu_quota", '"0.00%"'), ("limits", "cpu_quota", '"1.234%"'),
    ("limits", "cpu_quota", '"0.001%"'), ("limits", "cpu_quota", '"21474836.48%"'),
    ("limits", "cpu_quota", '"99999999999%"'),
    ("limits", "nofile", "0"), ("limits", "nofile", str(MAX_NOFILE + 1)),
    ("health", "timeout_s", "0"), ("health", "timeout_s", "0s"), ("health", "interval_s", "0"),
    ("health", "interval_s", "0ms"), ("restart", "delay_s", "0.0001"), ("restart", "watchdog_s", "0.0004"),
]
NAN_INF = [(s, k, v) for s, k in (("limits", "memory_max"), ("limits", "memory_high"), ("limits", "tasks_max"),
                                   ("limits", "nofile"), ("limits", "cpu_quota"), ("health", "timeout_s"),
                                   ("health", "interval_s"), ("restart", "delay_s"), ("restart", "watchdog_s"),
                                   ("health", "expect_status"))
           for v in (".nan", ".inf", "-.inf", "nan", "inf", '"nan%"', '"inf%"')]


@pytest.mark.parametrize(("section", "key", "value"), OBSERVED + NAN_INF)
def test_value_systemd_would_ignore_is_refused_with_file_and_line(tmp_path, section, key, value):
    problems = _problems(_spec(tmp_path, section, key, value))
    mine = [p for p in problems if p.path == f"services.api.{section}.{key}"]
    assert mine, [p.render() for p in problems]
    assert mine[0].origin is not None and (mine[0].origin.file, mine[0].origin.line) == (str(tmp_path / "s.yaml"), 10)
    assert mine[0].expected


BOUNDARIES_OK = [  # the edges systemd 252 still accepts (measured), and everyday values
    ("limits", "memory_max", "1"), ("limits", "memory_max", str(MAX_LIMIT_BYTES)), ("limits", "memory_max", "4G"),
    ("limits", "memory_max", "infinity"), ("limits", "memory_high", '"1.5K"'),
    ("limits", "tasks_max", "1"), ("limits", "tasks_max", str(MAX_TASKS)), ("limits", "tasks_max", "infinity"),
    ("limits", "cpu_quota", '"0.01%"'), ("limits", "cpu_quota", '"12.5%"'), ("limits", "cpu_quota", '"200%"'),
    ("limits", "cpu_quota", '"21474836.47%"'),
    ("limits", "nofile", "1"), ("limits", "nofile", str(MAX_NOFILE)), ("limits", "nofile", "65536"),
    ("health", "timeout_s", "1ms"), ("health", "timeout_s", "30"), ("health", "interval_s", "0.001"),
    ("restart", "delay_s", "0"), ("restart", "watchdog_s", "0"), ("restart", "delay_s", "1ms"),
]


@pytest.mark.parametrize(("section", "key", "value"), BOUNDARIES_OK)
def test_boundary_values_systemd_accepts_are_valid(tmp_path, section, key, value):
    load_spec([str(_spec(tmp_path, section, key, value))], check_artifacts=False)


def test_memory_max_zero_is_one_problem_not_also_memory_high_above_it(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(BASE + "    limits: {memory_max: 0, memory_high: 1G}\n")
    problems = _problems(path)
    assert [(p.path, p.message) for p in problems] == [("services.api.limits.memory_max", "memory_max out of range")]
    assert "more than 0 bytes" in (problems[0].expected or "")


def test_memory_high_above_memory_max_is_still_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(BASE + "    limits: {memory_max: 1G, memory_high: 2G}\n")
    assert [p.message for p in _problems(path)] == ["memory_high is above memory_max"]


def test_a_bad_value_in_defaults_is_reported_once_at_defaults(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(BASE.replace("services:", "defaults:\n  limits: {tasks_max: 0}\nservices:")
                    + "  web:\n    version: '1'\n    artifact: {url: 'https://x/y', sha256: '" + "b" * 64 + "'}\n")
    problems = _problems(path)
    assert [(p.path, p.origin.line if p.origin else 0) for p in problems] == [("defaults.limits.tasks_max", 5)]


def test_json_spec_with_huge_and_non_finite_numbers(tmp_path):
    doc: dict[str, Any] = json.loads(json.dumps({"version": 1, "hosts": {"node1": {"address": "10.0.0.1"}},
                                                 "services": {"api": {"version": "1", "artifact": {
                                                     "url": "https://x/y", "sha256": "a" * 64}}}}))
    text = json.dumps(doc)[:-3] + ', "limits": {"tasks_max": 1e999, "nofile": 1000000000000000000000000},' \
        ' "health": {"timeout_s": 1e999}}}}'
    path = tmp_path / "s.json"
    path.write_text(text)
    paths = {p.path for p in _problems(path)}
    assert {"services.api.limits.tasks_max", "services.api.limits.nofile", "services.api.health.timeout_s"} <= paths


def test_validate_cli_exits_1_and_names_file_line_and_expected(tmp_path):
    path = _spec(tmp_path, "limits", "tasks_max", "0")
    res = subprocess.run([sys.executable, "-m", "reconciler", "validate", "--skip-artifacts", "-f", str(path)],
                         capture_output=True, text=True, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 1, res
    assert f"{path}:10:7: services.api.limits.tasks_max: tasks_max out of range (expected a whole number from 1 " \
        f"to {MAX_TASKS}" in res.stderr
    assert "Traceback" not in res.stderr


def test_range_problem_directly():
    from reconciler.spec.units import parse_size, range_problem

    assert range_problem("memory_max", 0, parse_size(0))
    assert range_problem("memory_max", "infinity", "infinity") is None
    assert range_problem("cpu_quota", "0.01%", 0.01) is None
    assert range_problem("cpu_quota", "0.001%", 0.001)
    assert range_problem("watchdog_s", 0, 0.0) is None and range_problem("timeout_s", 0, 0.0)
