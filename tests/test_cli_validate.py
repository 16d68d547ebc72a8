"""`recon validate` and `recon explain` as a user runs them: real subprocesses of the installed `recon`
(and `python -m reconciler`) on the reference spec and on broken specs; no hosts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hosttools import IMPORT_PROBE

REPO = Path(__file__).resolve().parents[1]
RECON = str(Path(sys.executable).with_name("recon"))
PLATFORM = "specs/platform.yaml"
LOCAL = "specs/overrides/local.yaml"
HEAVY = ("pyinfra", "deepdiff", "paramiko", "psycopg")   # psycopg: only with a PostgreSQL state URL


def recon(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([RECON, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def line_of(path: str | Path, needle: str) -> int:
    text = (REPO / path).read_text()
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.fixture(scope="module", autouse=True)
def platform_artifacts() -> None:
    """The reference spec pins artifacts built by reconciler.standin.build; build them when missing."""
    names = re.findall(r"path: \.\./artifacts/(\S+?),", (REPO / PLATFORM).read_text())
    assert names
    if not all((REPO / "artifacts" / n).is_file() for n in names):
        subprocess.run([sys.executable, "-m", "reconciler.standin.build", "--out", "artifacts"], cwd=REPO,
                       check=True, capture_output=True)


BROKEN = """\
# yaml-language-server: $schema=schema.json
version: 1
hosts:
  n1: {address: 10.0.0.1}
services:
  api:
    version: 5.0
    artifact: {path: missing.bin, sha256: "SHA"}
    port: 8080
    depends_on: [db]
  db:
    version: "1"
    artifact: {path: missing.bin, sha256: "SHA"}
    port: 8080
    depends_on: [api]
    limits: {memory_max: 4X}
""".replace("SHA", "a" * 64)


def test_validate_platform_spec_prints_the_waves():
    r = recon("validate", "-f", PLATFORM, "-f", LOCAL)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == f"Valid: 9 services on 1 host, 5 dependency waves ({PLATFORM}, {LOCAL})"
    assert lines[1:] == [
        "  wave 1: orchestrator",
        "  wave 2: extension-registry, vault-service",
        "  wave 3: control-center, provisioning-daemon",
        "  wave 4: api-gateway, control-center-ui, mcp-server",
        "  wave 5: ai-service",
    ]


def test_validate_counts_the_externals_it_checks():
    ext = "specs/examples/external.yaml"
    r = recon("validate", "-f", PLATFORM, "-f", LOCAL, "-f", ext)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"Valid: 9 services and 1 external on 1 host, 5 dependency waves ({PLATFORM}, " \
                                       f"{LOCAL}, {ext})"
    out = json.loads(recon("validate", "-f", PLATFORM, "-f", LOCAL, "-f", ext, "--format", "json").stdout)
    assert out["externals"] == 1 and out["services"] == 9


def test_validate_json_when_valid():
    r = recon("validate", "-f", PLATFORM, "--format", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["valid"] is True and out["services"] == 9 and out["hosts"] == 1 and out["externals"] == 0
    assert out["waves"][0] == ["orchestrator"] and out["waves"][-1] == ["ai-service"]


def test_validate_errors_go_to_stderr_with_file_and_line(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text(BROKEN)
    r = recon("validate", "-f", str(spec))
    assert r.returncode == 1
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "Error: the spec has 6 problems:"
    assert lines[1] == (f'  {spec}:7:5: services.api.version: wrong type: a number '
                        f'(expected a version string in quotes, like "5.0.0"; found 5.0)')
    assert lines[2] == (f"  {spec}:8:16: services.api.artifact.path: artifact file not found "
                        f"(expected a file (paths are relative to the spec file); found {tmp_path / 'missing.bin'})")
    assert lines[3].startswith(f"  {spec}:10:5: services.api.depends_on: dependency cycle: api → db → api")
    assert lines[4].startswith(f"  {spec}:13:16: services.db.artifact.path: artifact file not found")
    assert lines[5].startswith(f"  {spec}:14:5: services.db.port: port 8080 on host 'n1' is already used by "
                               "service 'api'")
    assert lines[6].startswith(f"  {spec}:16:14: services.db.limits.memory_max: invalid value (expected a size")
    # --skip-artifacts leaves the artifact checks out
    r = recon("validate", "-f", str(spec), "--skip-artifacts")
    assert r.returncode == 1 and "artifact" not in r.stderr and "4 problems" in r.stderr


def test_validate_json_problems(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text(BROKEN)
    r = recon("validate", "-f", str(spec), "--format", "json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["valid"] is False
    first = out["problems"][0]
    assert first == {"file": str(spec), "line": 7, "column": 5, "path": "services.api.version",
                     "message": "wrong type: a number", "expected": 'a version string in quotes, like "5.0.0"',
                     "found": "5.0"}
    assert [p["path"] for p in out["problems"]] == [
        "services.api.version", "services.api.artifact.path", "services.api.depends_on", "services.db.artifact.path",
        "services.db.port", "services.db.limits.memory_max"]
    assert all(p["file"] == str(spec) and p["line"] >= 1 and p["expected"] for p in out["problems"])


def test_validate_output_does_not_depend_on_the_hash_seed(tmp_path):
    spec = tmp_path / "many.yaml"
    spec.write_text(
        "version: 1\nhosts: {n1: {address: a}, N2: {}, n3: {address: b, colour: red, size: 2}}\n"
        "services: {a: {port: x, depends_on: [b, zz, yy], x: 1, y: 2}, b: {depends_on: [a], port: 0},"
        " C: {}, d: {hosts: [n9, n8], limits: {memory_max: 4X, memory_high: 5Y, cpu_quota: 1}}}\n")
    outs = []
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([RECON, "validate", "-f", str(spec), "--format", "json"], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1
        outs.append(r.stdout)
    assert outs[0] == outs[1] == outs[2]
    assert len(json.loads(outs[0])["problems"]) >= 15


def test_validate_layering_error_names_the_override_file(tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("services:\n  orchestrator:\n    limits: {memory_max: lots}\n")
    r = recon("validate", "-f", PLATFORM, "-f", str(over))
    assert r.returncode == 1
    assert f"{over}:3:14: services.orchestrator.limits.memory_max: invalid value" in r.stderr


@pytest.mark.parametrize(("content", "expect"), [
    ("version: 1\nservices: [a,\n", ":2:14: malformed YAML"),
    ("- just\n- a list\n", ":1: a spec file must be a mapping at the top"),
    ("", ":1: `version` is required"),
])
def test_validate_bad_files_never_traceback(tmp_path, content, expect):
    spec = tmp_path / "bad.yaml"
    spec.write_text(content)
    r = recon("validate", "-f", str(spec))
    assert r.returncode == 1
    assert f"{spec}{expect}" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_validate_missing_and_non_utf8_files(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"version: 1\n# caf\xe9\n")
    r = recon("validate", "-f", str(tmp_path / "nope.yaml"), "-f", str(latin))
    assert r.returncode == 1
    assert f"{tmp_path / 'nope.yaml'}: spec file not found" in r.stderr
    assert f"{latin}:2:6: the file is not UTF-8 text (expected UTF-8; found byte 0xe9)" in r.stderr
    assert "Traceback" not in r.stderr


def test_explain_memory_max_shows_value_file_line_and_overrides():
    r = recon("explain", "orchestrator.limits.memory_max", "-f", PLATFORM, "-f", LOCAL)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == 'services.orchestrator.limits.memory_max = "256M"'
    assert re.fullmatch(rf"  set by    {re.escape(LOCAL)}:{line_of(LOCAL, 'memory_max: 256M')}:\d+", lines[1])
    assert re.fullmatch(rf'  overrode  {re.escape(PLATFORM)}:{line_of(PLATFORM, "memory_max: 4G")}:\d+  "4G"',
                        lines[2])
    assert re.fullmatch(rf'  overrode  {re.escape(LOCAL)}:{line_of(LOCAL, "memory_max: 128M")}:\d+  "128M"  '
                        r"\(via defaults\.limits\.memory_max\)", lines[3])
    assert re.fullmatch(rf'  overrode  {re.escape(PLATFORM)}:{line_of(PLATFORM, "memory_max: 1G")}:\d+  "1G"  '
                        r"\(via defaults\.limits\.memory_max\)", lines[4])
    assert len(lines) == 5


def test_explain_a_value_from_defaults():
    r = recon("explain", "control-center.limits.memory_max", "-f", PLATFORM, "-f", LOCAL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].endswith("(via defaults.limits.memory_max)")
    assert f"{LOCAL}:{line_of(LOCAL, 'memory_max: 128M')}:" in r.stdout.splitlines()[1]


def test_explain_an_external_entry():
    files = ("-f", PLATFORM, "-f", LOCAL, "-f", "specs/examples/external.yaml")
    r = recon("explain", "external.surrealdb.unit", *files)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ['external.surrealdb.unit = "surrealdb.service"',
                                     "  set by    specs/examples/external.yaml:13:5"]
    bad = recon("explain", "external.surrealdb.unti", *files)
    assert bad.returncode == 1 and "expected one of description, health, hosts, unit" in bad.stderr


def test_explain_missing_path_is_a_clear_error():
    r = recon("explain", "orchestrator.limits.nope", "-f", PLATFORM)
    assert r.returncode == 1 and r.stdout == ""
    assert "'nope' is not set in any file under services.orchestrator.limits" in r.stderr
    assert "expected one of cpu_quota, memory_high, memory_max, nofile, tasks_max" in r.stderr
    r = recon("explain", "nosuch.port", "-f", PLATFORM)
    assert r.returncode == 1
    assert "'nosuch' is not set in any file under services (expected one of ai-service" in r.stderr
    r = recon("explain", "orchestrator.port", "-f", "nope.yaml")
    assert r.returncode == 1 and "nope.yaml: spec file not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_python_dash_m_reconciler_is_recon():
    r = subprocess.run([sys.executable, "-m", "reconciler", "validate", "-f", PLATFORM, "-f", LOCAL], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("Valid: 9 services"), r.stderr




@pytest.mark.parametrize("args", [
    ["--help"],
    ["validate", "--help"],
    ["validate", "-f", PLATFORM, "-f", LOCAL],
    ["explain", "orchestrator.limits.memory_max", "-f", PLATFORM, "-f", LOCAL],
])
def test_fast_commands_do_not_import_heavy_modules(args):
    r = subprocess.run([sys.executable, "-c", IMPORT_PROBE.format(heavy=HEAVY), *args], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "HEAVY=", r.stderr


def test_validate_does_not_load_the_plan_or_rich() -> None:
    """validate stays quick: its renderer is a small module; the plan's renderers come on first use."""
    mods = ("rich", "reconciler.plan", "reconciler.render.text", "reconciler.review.model")
    r = subprocess.run([sys.executable, "-c", IMPORT_PROBE.format(heavy=mods), "validate", "-f", PLATFORM],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip().splitlines()[-1] == "HEAVY=", r.stderr
