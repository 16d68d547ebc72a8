"""`external:` at run time, pure: the probe's text and parsing, what refuses a dependent, the status rows and
the watch alerts of externals, and the observation carrying the probe in its one round trip."""

from __future__ import annotations

import base64

from reconciler.external import ExternalHealth, needed_on, parse_probe, probe_script, refusal, shown_from
from reconciler.observe import PROTOCOL, Target, build_script, parse_output
from reconciler.render.status import render_status_json, render_status_text
from reconciler.runner import StatusResult, StatusRow
from reconciler.spec.model import External
from reconciler.watch import AlertKind, AlertState, transitions

DB = External("surrealdb", ("n1",), "surrealdb.service", "http://127.0.0.1:8000/health", 200,
              (("status", "ok"),))
VAULT = External("vault-backend", ("n2",), None, "http://10.0.0.2:8200/v1/sys/health")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_probe_reads_the_unit_only_where_it_runs_and_never_changes_it() -> None:
    on_n1, on_n2 = probe_script([DB, VAULT], "n1"), probe_script([DB, VAULT], "n2")
    assert "systemctl show -p ActiveState,SubState --value surrealdb.service" in on_n1
    assert "systemctl" not in on_n2                                # its unit is not on n2: health only
    for script in (on_n1, on_n2):
        for verb in ("start", "stop", "restart", "enable", "disable", "kill", "mask", "reload"):
            assert f"systemctl {verb}" not in script
    assert "http://10.0.0.2:8200/v1/sys/health" in on_n1 and "base64" in on_n1   # expect_json: the body comes back


def test_parse_probe_and_what_is_wrong() -> None:
    ok_body, starting = b64('{"status": "ok"}'), b64('{"status": "starting"}')
    out = f"EXT\tsurrealdb\tactive/running\t200\t{ok_body}\nEXT\tvault-backend\t-\t000\t-\n"
    got = parse_probe(out, [DB, VAULT], "n1")
    assert got["surrealdb"].ok and got["surrealdb"].health_summary() == "HTTP 200"
    v = got["vault-backend"]
    assert not v.ok and v.unit is None and v.why() == "health http://10.0.0.2:8200/v1/sys/health: no answer"
    out = f"EXT\tsurrealdb\tinactive/dead\t200\t{starting}"
    db = parse_probe(out, [DB], "n1")["surrealdb"]
    assert db.why() == ('unit surrealdb.service is inactive/dead; health http://127.0.0.1:8000/health: '
                        'HTTP 200, status: expected "ok", found "starting"')
    assert parse_probe("EXT\tvault-backend\t-\t200", [VAULT], "n1")["vault-backend"].ok   # a stripped last field
    lost = parse_probe("", [DB], "n1")["surrealdb"]                  # no answer at all: not healthy
    assert not lost.ok and lost.state == "unknown"
    assert refusal("orchestrator", [db]).startswith(
        "not started: external surrealdb is unhealthy (unit surrealdb.service is inactive/dead; ")
    assert refusal("orchestrator", [db]).endswith("orchestrator depends on it (recon does not start or change an "
                                                  "external)")


def test_who_probes_what() -> None:
    from reconciler.spec.model import build_service

    api = build_service("api", {"version": "1", "hosts": ["n2"], "depends_on": ["surrealdb", "db"]}, ["n1", "n2"],
                        None, frozenset({"surrealdb", "vault-backend"}))
    assert api.depends_on == ("db",) and api.external_deps == ("surrealdb",)
    externals = {"surrealdb": DB, "vault-backend": VAULT}
    assert needed_on("n2", [api], externals) == [DB]
    assert shown_from("n1", [api], externals) == [DB]                # it runs there
    assert shown_from("n2", [api], externals) == [DB, VAULT]         # api needs it there; vault runs there
    assert shown_from("n3", [api], externals) == []


def _row(service: str, state: str, health: str, healthy: bool, external: bool = False) -> StatusRow:
    return StatusRow("n1", service, "-" if external else "1", None, None if external else "1", state, health, healthy,
                     "-", "-", 0, 0, external=external)


def test_status_and_watch_show_externals() -> None:
    up = StatusResult([_row("api", "active/running", "HTTP 200", True)], [],
                      [_row("surrealdb", "active/running", "HTTP 200", True, True)])
    down = StatusResult(up.rows, [], [_row("surrealdb", "inactive/dead", "no answer", False, True)])
    assert up.ok and not down.ok
    text = render_status_text(down, color=False, width=120)
    assert "external (not managed by recon)" in text and "inactive/dead" in text and "1/1 services healthy" in text
    assert '"external": true' in render_status_json(down)
    fired = transitions(up, down, "t")
    assert [(a.service, a.kind, a.state) for a in fired] == [("surrealdb", AlertKind.STOPPED, AlertState.FIRING)]
    no_unit = StatusResult(up.rows, [], [_row("vault", "-", "no answer", False, True)])
    assert [(a.kind, a.state) for a in transitions(None, no_unit, "t")] == [(AlertKind.UNHEALTHY, AlertState.FIRING)]
    back = transitions(down, up, "t")
    assert [(a.service, a.state) for a in back] == [("surrealdb", AlertState.RESOLVED)]


def test_the_observation_carries_the_probe_in_its_round_trip() -> None:
    t = Target("api", "/opt/p/api", "/etc/p/api.toml", "provisioning-api.service", "/etc/p/api.env")
    script = build_script([t], "salt", probe_script([DB], "n1"))
    assert "| block external" in script and "surrealdb.service" in script
    probed = b64("EXT\tsurrealdb\t-\t000\t-")
    answer = "\n".join([f"protocol\t-\t{b64(PROTOCOL)}", f"external\t-\t{probed}", f"end\t-\t{b64('ok')}"])
    obs = parse_output("n1", answer, [t])
    assert isinstance(parse_probe(obs.external, [DB], "n1")["surrealdb"], ExternalHealth)
    assert "block external" not in build_script([t], "salt")
