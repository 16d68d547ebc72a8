"""Spec keys `health.expect_json` and `external:`: the model, the checks (file, line, path, expected) and what
they render (the gate's check line, unit lines)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_spec import ART_BYTES, GOOD, at, problems, spec_text, where

from reconciler import healthjson
from reconciler.desired import desired_state
from reconciler.hostscripts import check_line
from reconciler.spec import load_spec
from reconciler.waves import waves


@pytest.fixture
def write(tmp_path: Path):
    """write(name, yaml) -> path, with test_spec's artifact beside it."""
    (tmp_path / "art.bin").write_bytes(ART_BYTES)

    def _write(name: str, text: str) -> str:
        (tmp_path / name).write_text(spec_text(text), encoding="utf-8")
        return str(tmp_path / name)

    return _write


HEALTH = """
    health:
      http: http://127.0.0.1:8080/health
      expect_json: {database: connected, ready: true, workers: 4}
"""


def with_api(extra: str) -> str:
    """GOOD with `extra` (indented for the api service) added to the api service."""
    return GOOD.replace("    port: 8080\n", "    port: 8080\n" + extra.lstrip("\n"), 1)


def test_expect_json_reaches_the_model_and_the_gate(write):
    spec = load_spec([write("s.yaml", with_api(HEALTH))])
    api = spec.services["api"]
    assert api.health_expect_json == (("database", "connected"), ("ready", True), ("workers", 4))
    d = desired_state(spec)["n1"]["api"]
    line = check_line(d)
    assert line.endswith(" ".join(["database", "s:connected", '\'"connected"\'', "ready", "true", "true",
                                   "workers", "n:4e0", "4"])), line
    assert check_line(desired_state(load_spec([write("g.yaml", GOOD)]))["n1"]["api"]).endswith(" 200")
    assert healthjson.awk_args({"ready": True}) == ["ready", "true", "true"]


def test_expect_json_needs_a_url_and_json_scalars(write):
    path = write("s.yaml", with_api("""
    health:
      expect_json: {database: connected}
"""))
    p = at(problems(path), "services.api.health.expect_json")
    assert "needs `health.http`" in p.message and where(p) == (path, 19)
    path = write("t.yaml", with_api("""
    health:
      http: http://127.0.0.1:8080/health
      expect_json: {database: [connected], ratio: .inf}
"""))
    found = problems(path)
    assert "a string, number, true, false or null" in (at(found, "services.api.health.expect_json.database")
                                                        .expected or "")
    assert at(found, "services.api.health.expect_json.ratio").message == "not a JSON value"
    path = write("u.yaml", with_api("""
    health:
      http: http://127.0.0.1:8080/health
      expect_json: {}
"""))
    assert at(problems(path), "services.api.health.expect_json")


# ---------------------------------------------------------------- external:

EXTERNAL = """
external:
  surrealdb:
    hosts: [n1]
    unit: surrealdb
    health: {http: "http://10.0.0.1:8000/health", expect_json: {status: ok}}
"""


def with_external(text: str = EXTERNAL, deps: str = "[db, surrealdb]") -> str:
    return GOOD.replace("depends_on: [db]", f"depends_on: {deps}") + text.lstrip("\n")


def test_external_model_and_unit_lines(write):
    spec = load_spec([write("s.yaml", with_external(deps="[db, surrealdb]").replace("defaults:\n  user: svc\n  "
                                                                                      "hosts: [n1]\n",
                                                                                      "defaults:\n  user: svc\n  "
                                                                                      "hosts: [n1, n2]\n"))])
    ext = spec.externals["surrealdb"]
    assert (ext.hosts, ext.unit, ext.health_url, ext.health_expect_json) == (
        ("n1",), "surrealdb.service", "http://10.0.0.1:8000/health", (("status", "ok"),))
    api = spec.services["api"]
    assert api.depends_on == ("db",) and api.external_deps == ("surrealdb",)
    d = desired_state(spec)
    on_n1 = d["n1"]["api"].unit_text
    assert "After=network-online.target provisioning-db.service surrealdb.service\n" in on_n1
    assert "Wants=network-online.target surrealdb.service\n" in on_n1
    assert "Requires=provisioning-db.service\n" in on_n1          # never Requires= on an external
    on_n2 = d["n2"]["api"].unit_text                               # not on n2: no ordering on a unit that is not there
    assert "After=network-online.target provisioning-db.service\n" in on_n2 and "surrealdb" not in on_n2
    assert "surrealdb" not in d["n1"]["db"].unit_text
    # waves are the services' own: an external is no wave
    assert [sorted(w) for w in waves(spec)] == [["db"], ["api"]]


def test_misspelt_dependency_gets_a_suggestion(write):
    path = write("s.yaml", with_external(deps="[db, surealdb]"))
    p = at(problems(path), "services.api.depends_on[1]")
    assert p.message == "unknown dependency 'surealdb'"
    assert p.found == "surealdb (did you mean 'surrealdb'?)"
    assert p.expected == "one of the services: api, db, or the externals: surrealdb"


def test_external_checks(write):
    bad = """
external:
  db:
    hosts: [n1]
    unit: x.service
  vault:
    hosts: [n12]
    unit: provisioning-vault.service
  nothing:
    hosts: [n1]
  away:
    hosts: [n2]
    unit: away.service
"""
    path = write("s.yaml", with_external(bad, deps="[db, away]"))
    found = problems(path)
    assert at(found, "external.db").message == "'db' is both a service and an external"
    p = at(found, "external.vault.hosts[0]")
    assert p.message == "unknown host 'n12'" and p.found == "n12 (did you mean 'n2' or 'n1'?)"
    assert "recon's own" in at(found, "external.vault.unit").message
    assert at(found, "external.nothing").message == "an external needs something to check"
    p = at(found, "external.away.health")
    assert p.message.startswith("api depends on away from n1, where its unit is not")
    path = write("t.yaml", with_external("""
external:
  surrealdb: {hosts: [n1], unit: "bad unit"}
"""))
    assert at(problems(path), "external.surrealdb.unit").expected == "a systemd unit name, e.g. surrealdb.service"


def test_the_example_layer_validates_over_the_platform():
    repo = Path(__file__).resolve().parents[1]
    spec = load_spec([str(repo / "specs/platform.yaml"), str(repo / "specs/examples/external.yaml")])
    assert spec.services["orchestrator"].external_deps == ("surrealdb",)
    assert all(s.health_expect_json == (("database", "connected"),) for s in spec.services.values())
    assert "Wants=network-online.target surrealdb.service" in desired_state(spec)["node1"]["orchestrator"].unit_text
