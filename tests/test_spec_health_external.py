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
