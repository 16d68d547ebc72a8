"""`logs:` without hosts: the unit (ReadWritePaths, PROVISIONING_LOG_FILE), the log directory recon creates,
the logrotate file rendered from the spec, how it is observed and planned (create, update, drift, delete,
refused when recon did not write it), and validation of `logs.dir`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.desired import LOGROTATE_PATH, desired_service, logrotate_text, parse_unit, sha256_text
from reconciler.errors import SpecError
from reconciler.observe import HOST_FILES, PROTOCOL, ObservedHost, build_script, parse_output
from reconciler.ownership import Owned, dirs_of
from reconciler.plan import Action, Kind, Part, make_plan, plan_logrotate
from reconciler.render import render_json, render_text
from reconciler.spec import load_spec
from reconciler.spec.model import Host, build_service
from reconciler.state import State

NODE1 = Host("node1", "10.0.0.5")
LOGS = {"dir": "/var/log/provisioning", "rotate": {"period": "daily", "keep": 30, "compress": True}}


def _d(name: str, **raw: Any) -> Any:
    doc: dict[str, Any] = {"version": "1.0.0", "artifact": {"path": f"/a/{name}", "sha256": "a" * 64},
                           "port": 8080, "logs": LOGS, **raw}
    return desired_service(build_service(name, doc, ["node1"], None), NODE1, None)


def test_the_unit_lets_the_service_write_its_log_dir_and_names_its_file() -> None:
    d = _d("orchestrator", config={"standin": {"log_file": "{log_file}"}})
    unit = parse_unit(d.unit_text)
    assert unit["ReadWritePaths"] == ["-/var/lib/provisioning/orchestrator -/var/log/provisioning"]
    assert '"PROVISIONING_LOG_FILE=/var/log/provisioning/orchestrator.log"' in unit["Environment"]
    assert d.config["standin"]["log_file"] == "/var/log/provisioning/orchestrator.log"
    plain = desired_service(build_service("web", {"version": "1", "artifact": {"path": "/a", "sha256": "a" * 64}},
                                          ["node1"], None), NODE1, None)
    assert parse_unit(plain.unit_text)["ReadWritePaths"] == ["-/var/lib/provisioning/web"]
    assert "PROVISIONING_LOG_FILE" not in plain.unit_text


def test_the_log_dir_is_created_for_the_service_account_and_var_log_is_left_as_the_system_has_it() -> None:
    specs = {s.path: s for s in dirs_of(_d("orchestrator", user="svc", group="svcg"))}
    assert (specs["/var/log/provisioning"].owner, specs["/var/log/provisioning"].group,
            specs["/var/log/provisioning"].role, specs["/var/log/provisioning"].mode) == ("svc", "svcg", "data", "750")
    assert specs["/var/log"].role == "system" and specs["/var"].role == "system"


def test_one_stanza_per_dir_and_policy_and_only_reloadable_services_are_reloaded() -> None:
    svcs = {"orchestrator": _d("orchestrator"), "control-center": _d("control-center", reload={"signal": "HUP"}),
            "ai-service": _d("ai-service", logs={"dir": "/var/log/ai", "rotate": {"period": "weekly", "keep": 4,
                                                                                  "compress": False}}),
            "web": desired_service(build_service("web", {"version": "1", "artifact": {"path": "/a",
                                                                                          "sha256": "a" * 64}},
                                                 ["node1"], None), NODE1, None)}
    text = logrotate_text(svcs)
    assert text is not None and text.startswith("# Managed by recon")
    stanzas = text.split("\n\n")[1:]
    assert len(stanzas) == 2
    ai, main = stanzas
    assert ai.startswith("/var/log/ai/ai-service.log {\n")
    assert "    weekly\n    rotate 4\n" in ai and "compress" not in ai and "postrotate" not in ai
    assert main.startswith("/var/log/provisioning/control-center.log /var/log/provisioning/orchestrator.log {\n")
    for line in ("daily", "rotate 30", "compress", "missingok", "su provisioning provisioning",
                 "create 0640 provisioning provisioning", "sharedscripts", "postrotate", "endscript"):
        assert f"    {line}\n" in main, line
    reload_line = next(x for x in main.splitlines() if "systemctl" in x)
    assert "provisioning-control-center.service" in reload_line and "orchestrator" not in reload_line
    assert "web" not in text
    assert logrotate_text({"web": svcs["web"]}) is None


def _obs(text: str | None) -> ObservedHost:
    return ObservedHost("node1", host_files={LOGROTATE_PATH: text} if text is not None else {})


def _rec(text: str) -> list[Owned]:
    return [Owned("file", LOGROTATE_PATH, "logrotate", ["orchestrator"], sha256_text(text))]


def test_the_logrotate_file_is_planned_like_every_recon_file() -> None:
    svcs = {"orchestrator": _d("orchestrator")}
    want = logrotate_text(svcs)
    assert want is not None
    # missing: create; there as written: nothing; a spec change: update (desired); a hand edit: update (drift)
    c, refused = plan_logrotate("node1", svcs, _obs(None), [], 9)
    assert c is not None and c.action == Action.CREATE and not c.drift and c.service == "" and not refused
    assert c.address == f"node1:{LOGROTATE_PATH}" and c.fields[0].part == Part.HOST_FILE and c.wave == 9
    assert plan_logrotate("node1", svcs, _obs(want), _rec(want), 9) == (None, [])
    old = want.replace("rotate 30", "rotate 7")
    c, _ = plan_logrotate("node1", svcs, _obs(old), _rec(old), 9)
    assert c is not None and c.action == Action.UPDATE and c.fields[0].kind == Kind.DESIRED
    assert c.reason == "logs.rotate changed"
    c, _ = plan_logrotate("node1", svcs, _obs(want + "# edited\n"), _rec(want), 9)
    assert c is not None and c.action == Action.UPDATE and c.drift and "edited outside recon" in c.reason
    c, _ = plan_logrotate("node1", svcs, _obs(None), _rec(want), 9)
    assert c is not None and c.action == Action.CREATE and c.drift and "removed outside recon" in c.reason
    # a file recon did not write is refused, never overwritten, and never deleted
    c, refused = plan_logrotate("node1", svcs, _obs("/var/log/x.log { daily }\n"), [], 9)
    assert c is None and len(refused) == 1 and "recon did not write it" in refused[0]
    assert plan_logrotate("node1", {}, _obs("/var/log/x.log { daily }\n"), [], 9) == (None, [])
    # no service wants it any more: deleted, since recon wrote it
    c, _ = plan_logrotate("node1", {}, _obs(want), _rec(want), 9)
    assert c is not None and c.action == Action.DELETE and not c.drift


def test_make_plan_shows_the_file_and_counts_it(tmp_path: Path) -> None:
    svcs = {"node1": {"orchestrator": _d("orchestrator")}}
    plan = make_plan(svcs, {"node1": _obs(None)}, State(), "salt")
    files = [c for c in plan.changes if not c.service]
    assert len(files) == 1 and plan.counts()["create"] == 2
    text = render_text(plan, color=False)
    assert f"node1:{LOGROTATE_PATH}" in text
    assert f'"address": "node1:{LOGROTATE_PATH}"' in render_json(plan)
    # --target plans only the named services: the host-wide file is left for a full plan
    assert not [c for c in make_plan(svcs, {"node1": _obs(None)}, State(), "salt", targets={"orchestrator"}).changes
                if not c.service]


def test_the_observation_reads_the_logrotate_file_with_the_other_files() -> None:
    assert HOST_FILES == (LOGROTATE_PATH,)
    script = build_script([], "salt")
    assert LOGROTATE_PATH in script and script.count("cat $files") == 1
    import base64

    def line(key: str, payload: bytes) -> str:
        return f"{key}\t-\t{base64.b64encode(payload).decode()}"

    body = b"/var/log/p/a.log {\n    daily\n}\n"
    out = "\n".join([line("protocol", PROTOCOL.encode()), line("meta", f"host_file\t-\t{LOGROTATE_PATH}\n".encode()),
                     line("sizes", f"{len(body)} {LOGROTATE_PATH}\n".encode()), line("files", body),
                     line("end", b"ok")])
    assert parse_output("node1", out, []).host_files == {LOGROTATE_PATH: body.decode()}


def _problems(tmp_path: Path, services: dict[str, dict[str, Any]]) -> list[str]:
    art = tmp_path / "art.bin"
    art.write_bytes(b"x")
    doc = {"version": 1, "hosts": {"node1": {"address": "10.0.0.1"}},
           "services": {n: {"version": "1", "artifact": {"path": str(art), "sha256": "a" * 64}, **f}
                        for n, f in services.items()}}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        load_spec([p], check_artifacts=False)
    except SpecError as exc:
        return [x.render() for x in exc.problems]
    return []


@pytest.mark.parametrize("services, want", [
    ({"web": {"logs": {"dir": "/var/log"}}}, "services.web.logs.dir: logs.dir cannot be recon's: /var/log is a system"),
    ({"web": {"logs": {"dir": "/etc/provisioning"}}}, "logs.dir /etc/provisioning overlaps the config dir"),
    ({"web": {"logs": {"dir": "/var/log/p", "rotate": {"period": "hourly"}}}}, "services.web.logs.rotate.period"),
    ({"web": {"logs": {"dir": "/var/log/p", "rotate": {"keep": -1}}}}, "services.web.logs.rotate.keep"),
    ({"web": {"logs": {"rotate": {"keep": 1}}}}, "services.web.logs"),
    ({"web": {"config": {"f": "{log_file}"}}}, "{log_file} is used but the service has no `logs.dir`"),
    ({"a": {"logs": {"dir": "/var/log/p"}}, "b": {"user": "other", "logs": {"dir": "/var/log/p"}}},
     "services.b.logs.dir: logs.dir /var/log/p is shared with service 'a', which runs as provisioning:provisioning"),
])
def test_validation_of_logs(tmp_path: Path, services: dict[str, dict[str, Any]], want: str) -> None:
    problems = _problems(tmp_path, services)
    assert any(want in p for p in problems), problems


def test_valid_logs_keys(tmp_path: Path) -> None:
    assert _problems(tmp_path, {"a": {"logs": LOGS, "config": {"standin": {"log_file": "{log_file}"}}},
                                "b": {"logs": {"dir": "/var/log/provisioning/{service}"}}}) == []
