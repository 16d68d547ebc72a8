"""Pure parts of the fault promises (issue 7, section 3), without hosts: the drop-ins in the observation
protocol and the plan, and which release is the rollback target or the previous one."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from test_plan_pure import SALT, converged, make_desired, record_for

from reconciler.apply import last_healthy, previous_for, rollback_target
from reconciler.observe import PROTOCOL, ObservedHost, ObservedService, ObserveError, Target, parse_output
from reconciler.plan import dropin_field, dropin_summary, make_plan, plan_service
from reconciler.state import State

UNIT = "provisioning-orchestrator.service"
ETC = f"/etc/systemd/system/{UNIT}.d/override.conf"
RUN = f"/run/systemd/system/{UNIT}.d/50-tasks.conf"


def _line(key: str, value: str) -> str:
    return f"{key}\t-\t{base64.b64encode(value.encode()).decode()}"


def test_parse_output_reads_drop_ins_with_the_other_files() -> None:
    t = [Target("orchestrator", "/opt/o", "/etc/o.toml", UNIT, "/etc/o.env")]
    etc_text, run_text = "[Service]\nMemoryMax=80M\n", "[Service]\nTasksMax=9\n"
    text = "\n".join([
        _line("protocol", PROTOCOL),
        _line("meta", f"current\torchestrator\t1.0\ndropin\torchestrator\t{ETC}\ndropin\torchestrator\t{RUN}\n"),
        _line("sizes", f"4 /etc/o.toml\n{len(etc_text)} {ETC}\n{len(run_text)} {RUN}\n"),
        _line("files", "x=1\n" + etc_text + run_text),
        _line("end", "ok")])
    o = parse_output("n", text, t).services["orchestrator"]
    assert o.config_text == "x=1\n"
    assert o.dropins == {ETC: etc_text, RUN: run_text}
    assert o.fingerprint()["dropins"] == {ETC: etc_text, RUN: run_text}    # a saved plan pins them
    odd = text.replace(_line("meta", f"current\torchestrator\t1.0\ndropin\torchestrator\t{ETC}\n"
                                     f"dropin\torchestrator\t{RUN}\n"),
                       _line("meta", "odd_dropin\torchestrator\t-\n"))
    with pytest.raises(ObserveError, match="newline in its file name"):
        parse_output("n", odd, t)


def test_dropin_field_and_summary() -> None:
    assert dropin_field(ETC) == "unit.dropin[override.conf]"
    assert dropin_field(RUN) == "unit.dropin[run/50-tasks.conf]"
    assert dropin_summary("# by hand\n[Service]\nMemoryMax = 80M\n\nTasksMax=9\n") == "MemoryMax=80M; TasksMax=9"
    assert dropin_summary("[Service]\nEnvironment=TOKEN=hunter2\nSetCredential=x:secret\n") == (
        "Environment=(not shown); SetCredential=(not shown)")
    assert dropin_summary("# nothing\n[Unit]\n") == "(no settings)"


def _with_dropins(d: object, **dropins: str) -> ObservedService:
    """d converged, with these drop-ins on the host and their limits live."""
    o = converged(d)   # type: ignore[arg-type]
    props = dict(o.props)
    if any("MemoryMax=80M" in t for t in dropins.values()):
        props["MemoryMax"] = str(80 * 1024**2)
    if any("TasksMax=9" in t for t in dropins.values()):
        props["TasksMax"] = "9"
    return dataclasses.replace(o, dropins=dict(dropins), props=props)


def test_drop_ins_are_drift_removed_by_a_health_gated_update() -> None:
    d = make_desired()
    for rec in (record_for(d), None):          # recon never writes a drop-in: drift with or without a record
        o = _with_dropins(d, **{ETC: "[Service]\nMemoryMax=80M\n", RUN: "[Service]\nTasksMax=9\n"})
        c = plan_service(d, o, rec, SALT)
        assert c is not None and (c.action, c.effect, c.drift) == ("update", "restart", True)
        # the drop-in explains the live MemoryMax: no "(live MemoryMax)" field, no "set at run time"
        assert [(f.path, f.before, f.after, f.kind) for f in c.fields] == [
            ("unit.dropin[override.conf]", "MemoryMax=80M", None, "drift"),
            ("unit.dropin[run/50-tasks.conf]", "TasksMax=9", None, "drift")]
        assert "set at run time" not in c.reason
    # a limit set at run time beside the drop-in is still reported as one
    o = _with_dropins(d, **{RUN: "[Service]\nTasksMax=9\n"})
    o.props["MemoryMax"] = str(50 * 1024**2)
    c = plan_service(d, o, record_for(d), SALT)
    assert c is not None and [f.path for f in c.fields] == ["unit.dropin[run/50-tasks.conf]",
                                                            "limits.memory_max (live MemoryMax)"]


@pytest.mark.parametrize(("patterns", "left"), [
    (("unit.dropin",), []),
    (("unit",), []),
    (("unit.dropin[override.conf]",), ["unit.dropin[run/50-tasks.conf]"]),
    (("unit.dropin[run/50-tasks.conf]",), ["unit.dropin[override.conf]"]),
    (("unit.dropin[other.conf]", "unit.drop"), ["unit.dropin[override.conf]", "unit.dropin[run/50-tasks.conf]"]),
])
def test_ignore_drift_covers_drop_ins_by_name_or_all(patterns: tuple[str, ...], left: list[str]) -> None:
    d = dataclasses.replace(make_desired(), ignore_drift=patterns)
    o = _with_dropins(d, **{ETC: "[Service]\nMemoryMax=80M\n", RUN: "[Service]\nTasksMax=9\n"})
    c = plan_service(d, o, record_for(d), SALT)
    assert c is not None
    if left:
        assert [f.path for f in c.fields] == left
    else:
        assert c.action == "none"       # ignored: and the live 80M is the drop-in's, not a run-time change


def test_a_create_over_left_drop_ins_removes_them_and_other_drop_ins_are_notes() -> None:
    d = make_desired()
    gone = ObservedService("orchestrator", dropins={ETC: "[Service]\nMemoryMax=80M\n"})
    c = plan_service(d, gone, None, SALT)
    assert c is not None and c.action == "create" and c.fields[-1].path == "unit.dropin[override.conf]"
    quiet = plan_service(dataclasses.replace(d, ignore_drift=("unit.dropin",)), gone, None, SALT)
    assert quiet is not None and all(not f.path.startswith("unit.dropin") for f in quiet.fields)
    # systemd's DropInPaths also names drop-ins recon does not plan (/usr/lib, service.d/): notes
    o = _with_dropins(d, **{ETC: "[Service]\nMemoryMax=80M\n"})
    usr = f"/usr/lib/systemd/system/{UNIT}.d/10-vendor.conf"
    o.props["DropInPaths"] = f"{ETC} {usr} /etc/systemd/system.control/{UNIT}.d/50-MemoryMax.conf"
    plan = make_plan({"node1": {"orchestrator": d}}, {"node1": ObservedHost("node1", {"orchestrator": o})},
                     State(lineage=SALT), SALT)
    assert plan.notes == [f"node1: {UNIT} has a drop-in recon does not manage: {usr} (left alone)"]
    assert [f.path for f in plan.changes[0].fields] == ["unit.dropin[override.conf]"]


def test_the_rollback_target_is_the_last_release_recorded_healthy() -> None:
    d = make_desired(version="1.1.0")

    def rec(status: str, version: str, previous: str | None) -> object:
        return dataclasses.replace(record_for(d), status=status, version=version, previous_version=previous)

    kept = ["1.0.0", "1.1.0"]
    assert last_healthy(None) is None
    assert last_healthy(rec("applied", "1.0.0", None)) == "1.0.0"             # type: ignore[arg-type]
    assert last_healthy(rec("rolled-back", "1.0.0", None)) == "1.0.0"         # type: ignore[arg-type]
    # killed in the health gate of 1.1.0, or failed with --no-rollback: 1.1.0 never proved healthy
    assert last_healthy(rec("in-progress", "1.1.0", "1.0.0")) == "1.0.0"      # type: ignore[arg-type]
    assert last_healthy(rec("failed", "1.1.0", "1.0.0")) == "1.0.0"           # type: ignore[arg-type]
    assert rollback_target(rec("in-progress", "1.1.0", "1.0.0"), kept) == "1.0.0"   # type: ignore[arg-type]
    assert rollback_target(rec("in-progress", "1.1.0", "1.0.0"), ["1.1.0"]) is None  # type: ignore[arg-type]
    assert rollback_target(None, kept) is None
    # the previous release to record: recorded, healthy, kept, and not the new release itself
    assert previous_for(rec("applied", "1.0.0", None), "1.1.0", kept) == "1.0.0"        # type: ignore[arg-type]
    assert previous_for(rec("in-progress", "1.1.0", "1.0.0"), "1.1.0", kept) == "1.0.0"  # type: ignore[arg-type]
    assert previous_for(rec("applied", "1.1.0", "1.0.0"), "1.1.0", kept) == "1.0.0"     # type: ignore[arg-type]
    assert previous_for(rec("failed", "1.1.0", "1.0.0"), "1.0.0", kept) is None         # type: ignore[arg-type]
    # `current` pointed at /tmp/evil by hand is never recorded: it is not a candidate at all
    assert previous_for(rec("applied", "1.1.0", None), "1.1.0", [*kept, "evil"]) is None  # type: ignore[arg-type]
    assert previous_for(None, "1.1.0", [*kept, "evil"]) is None
    assert previous_for(rec("applied", "1.0.0", None), "1.1.0", ["1.1.0"]) is None   # pruned  # type: ignore[arg-type]
