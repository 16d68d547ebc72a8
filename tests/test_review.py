"""Fast tests of `recon diff` (reconciler.review): temp git repos and plain spec files; no hosts."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.errors import ReconError
from reconciler.render.diff_markdown import render_diff_markdown
from reconciler.review import load_diff

ROOT = Path(__file__).resolve().parent.parent
PLATFORM = ROOT / "specs" / "platform.yaml"
LOCAL = ROOT / "specs" / "overrides" / "local.yaml"
ANSI = re.compile(r"\x1b\[")
FORMATS = ("text", "json", "markdown")


def diff_command(base: str, head: str, files: list[str], fmt: str, color: bool) -> tuple[str, int]:
    """What `recon diff` prints and its exit code, in process."""
    from reconciler.cli import exit_code
    from reconciler.render import render_diff

    diff = load_diff(base, head, files)
    return render_diff(diff, fmt, color), exit_code(diff)


def platform() -> dict[str, Any]:
    return yaml.safe_load(PLATFORM.read_text())


def write(path: Path, data: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def git(repo: Path, *args: str) -> str:
    r = subprocess.run(["git", "-c", "user.email=review@example.com", "-c", "user.name=Review Test",
                        "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args],
                       cwd=repo, capture_output=True, text=True, check=True)
    return r.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test from its temp directory, so spec files show up as `old.yaml`, `new.yaml`."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repo holding the reference spec (platform + local override) in one commit; cwd is the repo."""
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    shutil.copy(PLATFORM, write(r / "specs" / "platform.yaml", ""))
    shutil.copy(LOCAL, write(r / "specs" / "overrides" / "local.yaml", ""))
    commit_all(r, "platform")
    monkeypatch.chdir(r)
    return r


def pair(tmp_path: Path, change: Callable[[dict[str, Any]], None], base: dict[str, Any] | None = None
         ) -> tuple[str, str]:
    """old.yaml (the platform, or `base`) and new.yaml (a changed copy) in tmp_path."""
    old = base if base is not None else platform()
    new = copy.deepcopy(old)
    change(new)
    return os.path.relpath(write(tmp_path / "old.yaml", old)), os.path.relpath(write(tmp_path / "new.yaml", new))


def run(base: str, head: str, files: tuple[str, ...] = (), fmt: str = "text") -> tuple[str, int]:
    return diff_command(base, head, list(files), fmt, False)


def svc(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return spec["services"][name]


# ------------------------------------------------------------------------------------ what changes
def test_version_bump_and_config_change_between_git_refs(repo: Path) -> None:
    p = repo / "specs" / "platform.yaml"
    text = p.read_text()
    old_sha = re.search(r'orchestrator-5.0.0, sha256: "([0-9a-f]{64})"', text)[1]
    new_sha = ("1" if old_sha[0] == "0" else "0") + old_sha[1:]
    text = text.replace('version: "5.0.0"\n    artifact: {path: ../artifacts/orchestrator-5.0.0, sha256: "' + old_sha,
                        'version: "5.0.1"\n    artifact: {path: ../artifacts/orchestrator-5.0.1, sha256: "' + new_sha,
                        1)
    assert new_sha in text
    p.write_text(text)
    local = repo / "specs" / "overrides" / "local.yaml"
    local.write_text(local.read_text().replace("server: {workers: 2}", "server: {workers: 3}"))
    commit_all(repo, "bump orchestrator")
    files = ("specs/platform.yaml", "specs/overrides/local.yaml")

    out, code = run("HEAD~1", "HEAD", files)
    assert code == 2
    assert "orchestrator: version 5.0.0 → 5.0.1" in out
    assert "~ config.server.workers: 2 → 3" in out
    assert f"~ artifact.sha256: {old_sha[:12]}… → {new_sha[:12]}…" in out
    assert "vault-service" not in out.split("Diff:")[0].split("orchestrator", 1)[1]  # nothing else changed
    assert out.rstrip().endswith("Diff: 1 service changed. No risks found.")

    doc = json.loads(run("HEAD~1", "HEAD", files, "json")[0])
    fields = {f["path"]: f for f in doc["services"][0]["fields"]}
    assert fields["config.server.workers"]["before"] == 2 and fields["config.server.workers"]["after"] == 3
    # Origins read as the repo path at the ref, so a reviewer can find the line.
    assert fields["config.server.workers"]["where"].startswith("specs/overrides/local.yaml@HEAD:")
    assert fields["version"]["where"].startswith("specs/platform.yaml@HEAD:")
    assert doc["base"]["files"] == ["specs/platform.yaml@HEAD~1", "specs/overrides/local.yaml@HEAD~1"]


def test_paths_resolve_relative_to_cwd_and_worktree_ref(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (repo / "specs" / "platform.yaml").write_text(
        (repo / "specs" / "platform.yaml").read_text().replace("workers: 8", "workers: 12"))
    monkeypatch.chdir(repo / "specs")
    out, code = run("HEAD", "WORKTREE", ("platform.yaml",))
    assert code == 2 and "~ config.server.workers: 8 → 12" in out
    assert run("HEAD", ".", ("platform.yaml",)) == (out, code)
    assert re.match(r"recon diff: HEAD \([0-9a-f]{7}\) → working tree\n", out)


def test_config_keys_by_dotted_path(tmp_path: Path) -> None:
    def change(s: dict[str, Any]) -> None:
        cfg = svc(s, "orchestrator")["config"]
        cfg["execution"]["max_parallel_tasks"] = 200
        del cfg["execution"]["retry_backoff"]
        cfg["cache"] = {"ttl_s": 60, "backend": {"kind": "memory"}}
        svc(s, "control-center")["env"] = {"RUST_LOG": "debug"}

    out, code = run(*pair(tmp_path, change))
    assert code == 2
    assert "~ config.execution.max_parallel_tasks: 100 → 200" in out
    assert "- config.execution.retry_backoff: exponential" in out
    assert "+ config.cache.ttl_s: 60" in out
    assert "+ config.cache.backend.kind: memory" in out
    assert "+ env.RUST_LOG: debug" in out
    assert "orchestrator: config (4 changes)" in out


def test_service_added_and_removed(tmp_path: Path) -> None:
    def change(s: dict[str, Any]) -> None:
        del s["services"]["provisioning-daemon"]
        s["services"]["search"] = {"version": "1.0.0", "artifact": {"path": "search-1.0.0", "sha256": "a" * 64},
                                   "port": 8090, "depends_on": ["orchestrator"], "config": {"index": {"shards": 2}}}

    out, code = run(*pair(tmp_path, change))
    assert code == 2
    assert "+ search: new service, version 1.0.0 on node1, port 8090" in out
    assert "+ depends_on: orchestrator" in out and "+ config.index.shards: 2" in out
    assert "- provisioning-daemon: removed (was version 1.0.0 on node1)" in out
    assert "provisioning-daemon: removed from the spec: `recon apply` stops it" in out
    doc = json.loads(run(*pair(tmp_path, change), fmt="json")[0])
    assert doc["summary"]["services"] == {"added": 1, "changed": 0, "removed": 1}


def test_hosts_dependencies_limits_hardening_and_host_entries(tmp_path: Path) -> None:
    def change(s: dict[str, Any]) -> None:
        s["hosts"]["node2"] = {"address": "10.0.0.6"}
        s["hosts"]["node1"]["user"] = "deploy"
        svc(s, "api-gateway")["hosts"] = ["node1", "node2"]
        svc(s, "api-gateway")["depends_on"] = ["control-center"]
        svc(s, "orchestrator")["limits"].update(memory_max="2G", memory_high="1536M")
        svc(s, "orchestrator")["hardening"] = {"protect_system": "full"}
        svc(s, "orchestrator")["health"] = {"timeout_s": 60}

    out, code = run(*pair(tmp_path, change))
    assert code == 2
    assert "+ hosts: node2" in out and "- depends_on: extension-registry" in out
    assert "api-gateway: hosts +node2; depends_on -extension-registry" in out
    assert "~ limits.memory_max: 4G → 2G" in out
    assert "~ hardening.protect_system: strict → full" in out
    assert "~ health.timeout_s: 30 → 60" in out
    assert "+ host node2: new host (10.0.0.6)" in out and "+ address: 10.0.0.6" in out
    assert "~ host node1: user" in out and "~ user: root → deploy" in out
    assert "! warning orchestrator: memory_max lowered 4G → 2G" in out
    assert 'hardening weakened: protect_system "strict" → "full"' in out


def test_no_changes_exits_0(tmp_path: Path, repo: Path) -> None:
    old, new = pair(tmp_path, lambda s: None)
    out, code = run(old, new)
    assert code == 0 and "No changes" in out and "No risks found." in out
    md, code = run(old, new, fmt="markdown")
    assert code == 0 and md.startswith("### recon diff: no changes") and "No changes" in md
    assert json.loads(run(old, new, fmt="json")[0])["summary"]["has_changes"] is False
    # A commit that only edits comments and layout changes nothing either.
    p = repo / "specs" / "platform.yaml"
    p.write_text("# reviewed\n" + p.read_text().replace("port: 8080\n", "port:   8080   # the API\n"))
    commit_all(repo, "comments")
    out, code = run("HEAD~1", "HEAD", ("specs/platform.yaml",))
    assert code == 0 and "No changes" in out


# ------------------------------------------------------------------------------------------- risks
def test_removing_a_service_still_depended_on_is_an_error(tmp_path: Path) -> None:
    old, new = pair(tmp_path, lambda s: s["services"].pop("extension-registry"))
    out, code = run(old, new)
    assert code == 1
    assert re.search(r"✗ error +api-gateway: still depends on extension-registry, which this change removes", out)
    assert "(new.yaml:" in out  # where: the file and line of the dangling reference
    md = run(old, new, fmt="markdown")[0]
    assert "❌ **api-gateway**: still depends on extension-registry" in md and "❌ 1 error" in md
    doc = json.loads(run(old, new, fmt="json")[0])
    assert doc["head"]["valid"] is False and doc["exit_code"] == 1
    assert {"level": "error", "subject": "api-gateway"}.items() <= doc["risks"][0].items()


def test_dependency_cycle_in_head_is_flagged(tmp_path: Path) -> None:
    old, new = pair(tmp_path, lambda s: svc(s, "orchestrator").update(depends_on=["ai-service"]))
    out, code = run(old, new)
    assert code == 1
    # Named after the service whose new dependency closed the cycle.
    assert re.search(r"✗ error +orchestrator: dependency cycle: .*orchestrator.* \(no apply order exists\)", out)


def test_port_clash_in_head_is_flagged(tmp_path: Path) -> None:
    old, new = pair(tmp_path, lambda s: svc(s, "mcp-server").update(port=8080))
    out, code = run(old, new)
    assert code == 1
    assert re.search(r"✗ error +mcp-server: port clash: port 8080 on host 'node1' is already used by service "
                     r"'orchestrator'", out)
    assert "❌ **mcp-server**: port clash" in run(old, new, fmt="markdown")[0]


def test_any_head_validation_error_is_printed_with_file_and_line(tmp_path: Path) -> None:
    old, new = pair(tmp_path, lambda s: svc(s, "ai-service").update(limits={"memory_max": "lots"}))
    out, code = run(old, new)
    assert code == 1
    assert re.search(r"✗ error +ai-service: invalid spec: services\.ai-service\.limits\.memory_max: "
                     r".*found \"lots\".*\(new\.yaml:\d+\)", out)
    # A HEAD that cannot even be parsed: the problem, no diff, exit 1.
    Path(new).write_text("services: [unclosed\n")
    out, code = run(old, new)
    assert code == 1 and "malformed YAML" in out and "No diff: the spec at new.yaml could not be read" in out
    assert "No changes" not in out
    assert json.loads(run(old, new, fmt="json")[0])["summary"]["computed"] is False


def test_version_risks_major_bump_and_downgrade(tmp_path: Path) -> None:
    def change(s: dict[str, Any]) -> None:
        svc(s, "orchestrator").update(version="6.0.0")
        svc(s, "orchestrator")["artifact"]["sha256"] = "b" * 64
        svc(s, "vault-service").update(version="3.9.2")
        svc(s, "vault-service")["artifact"]["sha256"] = "c" * 64
        svc(s, "mcp-server")["artifact"]["sha256"] = "d" * 64  # same version, new binary

    out, code = run(*pair(tmp_path, change))
    assert code == 2  # warnings do not fail the review
    assert "orchestrator: major version bump 5.0.0 → 6.0.0" in out
    assert "its dependents: vault-service, control-center, extension-registry, provisioning-daemon" in out
    assert "vault-service: version downgrade 4.0.0 → 3.9.2" in out
    assert "mcp-server: artifact checksum changed without a version change" in out


def test_removing_a_host_that_still_has_services(tmp_path: Path) -> None:
    base = platform()
    base["hosts"]["node2"] = {"address": "10.0.0.6"}
    svc(base, "api-gateway")["hosts"] = ["node1", "node2"]
    old, new = pair(tmp_path, lambda s: s["hosts"].pop("node2"), base=base)
    out, code = run(old, new)
    assert code == 1
    assert "api-gateway: still runs on host node2, which this change removes" in out
    assert "- host node2: removed (was 10.0.0.6; ran api-gateway at old.yaml)" in out

    def move_off(s: dict[str, Any]) -> None:
        s["hosts"].pop("node2")
        svc(s, "api-gateway")["hosts"] = ["node1"]

    out, code = run(*pair(tmp_path, move_off, base=base))
    assert code == 2
    assert "host node2: removed while api-gateway ran on it at old.yaml: recon stops managing node2" in out


# ----------------------------------------------------------------------------------------- secrets
def test_secret_values_are_never_read_or_printed(tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                 request: pytest.FixtureRequest) -> None:
    """The spec holds references; the values live in the environment and a file at run time. The review
    must not read them (they would be the only way a canary could reach the output), and an env var whose
    name looks secret has its value hidden even though it is written in the spec."""
    canaries = {"VAULT_TOKEN": "canary-env-old-7f3a", "VAULT_TOKEN_V2": "canary-env-new-91be",
                "DB_PASSWORD": "canary-file-c0de"}
    for var in ("VAULT_TOKEN", "VAULT_TOKEN_V2"):
        monkeypatch.setenv(var, canaries[var])
    short = Path(tempfile.mkdtemp(prefix="rv-"))   # a value is shown whole up to 80 characters: under xdist,
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))   # tmp_path is 10 longer (popen-gwN)
    pw = write(short / "db-password", canaries["DB_PASSWORD"])
    in_spec_canary = "canary-in-spec-5ee1"
    p = repo / "specs" / "platform.yaml"
    text = p.read_text().replace(
        "secrets: {VAULT_TOKEN: {from_env: VAULT_TOKEN}}",
        f"secrets: {{VAULT_TOKEN: {{from_env: VAULT_TOKEN_V2}}, DB_PASSWORD: {{from_file: {pw}}}}}\n"
        f"    env: {{API_TOKEN: {in_spec_canary}, TOKEN_FILE: /run/token}}")
    assert text != p.read_text()
    p.write_text(text)
    commit_all(repo, "rotate secrets")

    outputs = [diff_command("HEAD~1", "HEAD", ["specs/platform.yaml"], fmt, color)[0]
               for fmt in FORMATS for color in (False, True)]
    for out in outputs:
        for canary in [*canaries.values(), in_spec_canary]:
            assert canary not in out
    text_out, md_out, json_out = outputs[0], outputs[4], outputs[2]
    assert "~ secrets.VAULT_TOKEN: env VAULT_TOKEN → env VAULT_TOKEN_V2" in text_out
    assert f"+ secrets.DB_PASSWORD: file {pw}" in text_out
    assert "+ env.API_TOKEN: (hidden)" in text_out and "+ env.TOKEN_FILE: /run/token" in text_out
    assert "env API_TOKEN looks like a secret but is set in plain `env:`" in text_out
    assert "secrets.DB_PASSWORD" in md_out
    secret_fields = [f for s in json.loads(json_out)["services"] for f in s["fields"]
                     if f["path"].startswith("secrets.")]
    assert secret_fields and all(f["sensitive"] for f in secret_fields)


# ------------------------------------------------------------------------------------------ formats
def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def big_spec(n: int, version: str, workers: int) -> dict[str, Any]:
    services = {f"svc-{i:03d}": {"version": version, "artifact": {"path": f"a-{i}-{version}",
                                                                  "sha256": sha256(f"{version}-{i}")},
                                 "port": 10000 + i, "depends_on": [f"svc-{i - 1:03d}"] if i else [],
                                 "config": {"server": {"workers": workers, "name": f"service number {i}"}}}
                for i in range(n)}
    return {"version": 1, "hosts": {"node1": {"address": "10.0.0.5"}}, "services": services}


def test_markdown_stays_under_the_limit_for_a_huge_diff(tmp_path: Path) -> None:
    old, new = "old.yaml", "new.yaml"
    write(tmp_path / old, big_spec(500, "1.0.0", 4))
    write(tmp_path / new, big_spec(500, "2.0.0", 8))
    md, code = run(old, new, fmt="markdown")
    assert code == 2
    assert len(md) <= 65000
    assert md.startswith("### recon diff: 500 services changed · ⚠️ 500 warnings")
    assert ("_Not shown (comment size limit): 450 of 500 risks, the field changes of " in md
            and "Run `recon diff old.yaml new.yaml` for the full diff._" in md)
    assert "| svc-000 | ~ changed ⚠️ | version 1.0.0 → 2.0.0; config.server.workers 4 → 8 |" in md
    assert md.count("<details>") == md.count("</details>")
    diff = load_diff(old, new)
    for limit in (20000, 3000, 500):
        assert len(render_diff_markdown(diff, limit=limit)) <= limit


def test_markdown_layout_small_diff(tmp_path: Path) -> None:
    def change(s: dict[str, Any]) -> None:
        svc(s, "orchestrator").update(version="5.0.1")
        svc(s, "orchestrator")["artifact"]["sha256"] = "e" * 64
        svc(s, "orchestrator")["config"]["server"]["workers"] = 16

    md, _ = run(*pair(tmp_path, change), fmt="markdown")
    assert md.splitlines()[0] == "### recon diff: 1 service changed"
    assert "| orchestrator | ~ changed | version 5.0.0 → 5.0.1; config.server.workers 8 → 16 |" in md
    assert "<details><summary>~ orchestrator: version 5.0.0 → 5.0.1" in md
    assert "```diff\n~ version: 5.0.0 → 5.0.1\n" in md and "~ config.server.workers: 8 → 16" in md


def test_json_shape(tmp_path: Path) -> None:
    old, new = pair(tmp_path, lambda s: svc(s, "orchestrator").update(version="5.0.1", port=9080))
    out, code = run(old, new, fmt="json")
    doc = json.loads(out)
    assert list(doc) == ["format_version", "base", "head", "summary", "services", "hosts", "risks", "notes",
                         "exit_code"]
    assert doc["format_version"] == 1 and doc["exit_code"] == code == 2
    assert set(doc["head"]) == {"ref", "rev", "files", "valid", "problems"}
    assert doc["summary"] == {"computed": True, "has_changes": True,
                              "services": {"added": 0, "changed": 1, "removed": 0},
                              "hosts": {"added": 0, "changed": 0, "removed": 0}, "errors": 0, "warnings": 2}
    s = doc["services"][0]
    assert set(s) == {"name", "change", "summary", "version_before", "version_after", "where", "fields"}
    assert (s["name"], s["change"], s["version_before"], s["version_after"]) == ("orchestrator", "changed",
                                                                                 "5.0.0", "5.0.1")
    assert {"path": "port", "change": "changed", "before": 8080, "after": 9080, "sensitive": False}.items() \
        <= next(f for f in s["fields"] if f["path"] == "port").items()
    assert {r["level"] for r in doc["risks"]} == {"warning"}  # same checksum; port change with dependents


def test_text_colour_only_when_asked(tmp_path: Path) -> None:
    old, new = pair(tmp_path, lambda s: svc(s, "orchestrator").update(version="5.0.1"))
    plain, _ = diff_command(old, new, [], "text", False)
    coloured, _ = diff_command(old, new, [], "text", True)
    assert not ANSI.search(plain) and ANSI.search(coloured)
    assert ANSI.sub("", re.sub(r"\x1b\[[0-9;]*m", "", coloured)) == plain


# ------------------------------------------------------------------------------------- usage errors
def test_usage_errors_are_recon_errors(tmp_path: Path, repo: Path) -> None:
    with pytest.raises(ReconError, match=r"unknown git ref 'origin/nope'.*fetch-depth: 0"):
        load_diff("origin/nope", "HEAD", ["specs/platform.yaml"])
    with pytest.raises(ReconError, match=r"not found at HEAD~0 and HEAD"):
        load_diff("HEAD~0", "HEAD", ["specs/nope.yaml"])
    with pytest.raises(ReconError, match=r"BASE 'main' is not a spec file\. To compare git refs"):
        load_diff("main", "HEAD", [])
    with pytest.raises(ReconError, match=r"outside the git repository"):
        load_diff("HEAD", "WORKTREE", [str(tmp_path / "elsewhere.yaml")])
    with pytest.raises(ValueError, match=r"unknown diff format"):
        diff_command("HEAD", "HEAD", ["specs/platform.yaml"], "yaml", False)
    with pytest.raises(ReconError, match=r"not inside a git repository"):
        load_diff("HEAD~1", "HEAD", ["x.yaml"], cwd=str(tmp_path))


def test_a_file_new_in_head_reads_as_empty_at_base(repo: Path) -> None:
    write(repo / "specs" / "overrides" / "prod.yaml", {"services": {"orchestrator": {"config": {"server": {
        "workers": 32}}}}})
    out, code = run("HEAD", "WORKTREE", ("specs/platform.yaml", "specs/overrides/prod.yaml"))
    assert code == 2
    assert "specs/overrides/prod.yaml does not exist at HEAD; read as empty there" in out
    assert "~ config.server.workers: 8 → 32" in out
    # The other way round (a file HEAD no longer has) is a HEAD problem: `recon plan` would fail.
    out, code = run("WORKTREE", "HEAD", ("specs/platform.yaml", "specs/overrides/prod.yaml"))
    assert code == 1 and "spec file not found" in out


# ------------------------------------------------------------------------------------ text layout
def test_a_single_field_change_prints_once(tmp_path: Path) -> None:
    """`~ orchestrator: config.server.workers 8 → 16` over `~ config.server.workers: 8 → 16` said it twice."""
    old, new = pair(tmp_path, lambda s: svc(s, "orchestrator")["config"]["server"].update(workers=16))
    out, code = run(old, new)
    assert code == 2
    assert out.count("config.server.workers") == 1, out
    assert "  ~ orchestrator\n      ~ config.server.workers: 8 → 16\n" in out
    # The summary stays in Markdown's table and in JSON.
    assert "| orchestrator | ~ changed | config.server.workers 8 → 16 |" in run(old, new, fmt="markdown")[0]
    assert json.loads(run(old, new, fmt="json")[0])["services"][0]["summary"] == "config.server.workers 8 → 16"
    # A version-only change, and one host added to a service.
    old, new = pair(tmp_path, lambda s: svc(s, "orchestrator").update(version="5.0.1"))
    out, _ = run(old, new)
    assert out.split("Risks:")[0].count("5.0.0 → 5.0.1") == 1
    assert "  ~ orchestrator\n      ~ version: 5.0.0 → 5.0.1\n" in out

    def add_host(s: dict[str, Any]) -> None:
        s["hosts"]["node2"] = {"address": "10.0.0.6"}
        svc(s, "api-gateway")["hosts"] = ["node1", "node2"]

    out, _ = run(*pair(tmp_path, add_host))
    assert "  ~ api-gateway\n      + hosts: node2\n" in out
    # When the summary only names what changed (several fields, an added key, a long value), it stays.
    old, new = pair(tmp_path, lambda s: svc(s, "orchestrator")["config"]["server"].update(workers=16, extra=1))
    out, _ = run(old, new)
    assert "orchestrator: config (2 changes)" in out and "~ config.server.workers: 8 → 16" in out
    old, new = pair(tmp_path, lambda s: svc(s, "orchestrator").setdefault("env", {}).update(DEBUG="1"))
    out, _ = run(old, new)
    assert "~ orchestrator: +env.DEBUG\n" in out and "+ env.DEBUG: 1" in out
    base = platform()
    svc(base, "orchestrator")["config"]["server"]["workers"] = "x" * 30
    old, new = pair(tmp_path, lambda s: svc(s, "orchestrator")["config"]["server"].update(workers="y" * 30),
                    base=base)
    out, _ = run(old, new)
    assert "~ orchestrator: config.server.workers\n" in out
    assert f"~ config.server.workers: {'x' * 30} → {'y' * 30}" in out


# ------------------------------------------------------------------------------ one layer, on disk
def recon(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NO_COLOR": "1"})


@pytest.fixture
def layers(tmp_path: Path) -> Path:
    """specs/platform.yaml, specs/overrides/local.yaml, and local-b.yaml: local.yaml with 3 workers instead
    of 2, without orchestrator's limits, and a longer control-center health timeout."""
    shutil.copy(PLATFORM, write(tmp_path / "specs" / "platform.yaml", ""))
    local = LOCAL.read_text()
    write(tmp_path / "specs" / "overrides" / "local.yaml", local)
    b = local.replace("server: {workers: 2}", "server: {workers: 3}")
    b = b.replace("    limits: {memory_max: 256M, memory_high: 192M, cpu_quota: 50%}\n", "")
    b += "  control-center:\n    health: {timeout_s: 40}\n"
    assert b.count("\n") == local.count("\n") + 1
    write(tmp_path / "specs" / "overrides" / "local-b.yaml", b)
    return tmp_path


def test_diff_one_layer_of_a_layered_spec_through_the_cli(layers: Path) -> None:
    """BASE and HEAD files with -f: the -f files are the layers beneath, BASE and HEAD the two versions of
    the layer on top (the newcomer's `recon diff local.yaml local-b.yaml -f specs/platform.yaml`)."""
    a, b = "specs/overrides/local.yaml", "specs/overrides/local-b.yaml"
    r = recon("diff", a, b, "-f", "specs/platform.yaml", cwd=layers)
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stdout
    assert out.startswith(f"recon diff: {a} → {b}\nSpec files: specs/platform.yaml, {a} → {b}\n")
    assert "~ config.server.workers: 2 → 3" in out
    assert "~ limits.memory_max: 256M → 4G" in out        # the platform's own limit for orchestrator
    assert "  ~ control-center\n      ~ health.timeout_s: 15 → 40\n" in out
    assert "new service" not in out and "Risks:" not in out
    assert out.endswith("\nDiff: 2 services changed. No risks found.\n")
    doc = json.loads(recon("diff", a, b, "-f", "specs/platform.yaml", "--format", "json", cwd=layers).stdout)
    assert doc["base"]["files"] == ["specs/platform.yaml", a] and doc["head"]["files"] == ["specs/platform.yaml", b]
    assert doc["base"]["valid"] and doc["head"]["valid"] and doc["summary"]["errors"] == 0
    fields = {f["path"]: f for s in doc["services"] for f in s["fields"]}
    assert fields["config.server.workers"]["where"].startswith(f"{b}:")
    # Named among the -f files too (as in `recon plan -f … -f local.yaml`), BASE is replaced where it stands:
    # the same diff, and a layer above it still applies.
    r2 = recon("diff", a, b, "-f", "specs/platform.yaml", "-f", a, cwd=layers)
    assert r2.returncode == 2 and r2.stdout.split("\n", 2)[2] == out.split("\n", 2)[2]
    write(layers / "top.yaml", {"services": {"orchestrator": {"config": {"server": {"workers": 9}}}}})
    r3 = recon("diff", a, b, "-f", "specs/platform.yaml", "-f", a, "-f", "top.yaml", cwd=layers)
    assert r3.returncode == 2 and f"Spec files: specs/platform.yaml, {a} → {b}, top.yaml\n" in r3.stdout
    assert "workers" not in r3.stdout and "~ limits.memory_max: 256M → 4G" in r3.stdout
    # No change between the two versions: exit 0.
    r4 = recon("diff", a, a, "-f", "specs/platform.yaml", cwd=layers)
    assert r4.returncode == 0 and "No changes" in r4.stdout


def test_diff_one_layer_usage_errors(layers: Path) -> None:
    a = "specs/overrides/local.yaml"
    r = recon("diff", a, "specs/overrides/local-bb.yaml", "-f", "specs/platform.yaml", cwd=layers)
    assert r.returncode == 1 and not r.stdout
    assert f"BASE '{a}' is a file but HEAD 'specs/overrides/local-bb.yaml' is not" in r.stderr
    assert "Did you mean 'specs/overrides/local-b.yaml'" in r.stderr
    r = recon("diff", a, "specs/overrides/local-b.yaml", "-f", "specs/platfrom.yaml", cwd=layers)
    assert r.returncode == 1 and "spec file specs/platfrom.yaml not found" in r.stderr
    assert "Did you mean 'specs/platform.yaml'?" in r.stderr
    r = recon("diff", a, "specs/overrides/local-b.yaml", "-f", a, "-f", "specs/overrides/local-b.yaml", cwd=layers)
    assert r.returncode == 1 and "both among the -f files" in r.stderr
    # Two override files without -f: still two whole specs, with a hint at -f.
    r = recon("diff", a, "specs/overrides/local-b.yaml", cwd=layers)
    assert r.returncode == 1
    assert f"recon diff {a} specs/overrides/local-b.yaml -f SPEC…" in r.stdout
    assert "Traceback" not in r.stderr


def test_misspelt_git_ref_and_spec_file_suggest_the_closest(repo: Path) -> None:
    git(repo, "branch", "release-5")
    with pytest.raises(ReconError, match=r"unknown git ref 'HAED'.* Did you mean 'HEAD'\?"):
        load_diff("HAED", "WORKTREE", ["specs/platform.yaml"])
    with pytest.raises(ReconError, match=r"unknown git ref 'relase-5'.* Did you mean 'release-5'\?"):
        load_diff("relase-5", "HEAD", ["specs/platform.yaml"])
    with pytest.raises(ReconError, match=r"spec file specs/platfrom.yaml not found at HEAD and working tree\. "
                                         r"Did you mean 'specs/platform.yaml'\?"):
        load_diff("HEAD", "WORKTREE", ["specs/platfrom.yaml"])
    with pytest.raises(ReconError, match=r"BASE 'specs/platfrom.yaml' is not a spec file\. "
                                         r"Did you mean 'specs/platform.yaml'\?"):
        load_diff("specs/platfrom.yaml", "specs/platform.yaml", [])


@pytest.mark.parametrize("fmt", FORMATS)
def test_recon_diff_imports_no_heavy_module(layers: Path, fmt: str) -> None:
    from hosttools import IMPORT_PROBE
    from test_cli_validate import HEAVY

    r = subprocess.run([sys.executable, "-c", IMPORT_PROBE.format(heavy=HEAVY), "diff", "specs/overrides/local.yaml",
                        "specs/overrides/local-b.yaml", "-f", "specs/platform.yaml", "--format", fmt],
                       cwd=layers, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "HEAVY=", r.stderr


def test_diff_help_explains_one_layer() -> None:
    r = recon("diff", "--help", cwd=ROOT)
    assert r.returncode == 0
    assert "recon diff local.yaml local-b.yaml -f specs/platform.yaml   # one layer, two versions" in r.stdout
