"""The recorder (`reconciler/recorder.py`) without a host: service records with the directories a run
created, status changes, deletes and what they release, history lines, and the records `settle` adopts
for services that need no change. Each against a StateStore in tmp_path, read back from disk."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from test_hostscripts import _svc

from reconciler import ownership
from reconciler.desired import DesiredService
from reconciler.plan import Action, Change, Effect, Plan
from reconciler.recorder import Recorder, record_of
from reconciler.state import RecordStatus, StateStore


def _rec(tmp_path: Path) -> tuple[Recorder, StateStore]:
    store = StateStore(tmp_path / "state")
    state = store.load()
    state.lineage = "salt"
    return Recorder(store, state, "salt", command="apply"), store


def test_record_saves_the_desired_service_with_the_dirs_this_run_created(tmp_path: Path) -> None:
    r, store = _rec(tmp_path)
    d = _svc(tmp_path, secret_names=("T",), secrets_text='T="v"\n')
    r.ensured("n1", d, [("dir", d.service_dir), ("dir", d.service_dir + "/releases"),
                        ("dir", str(Path(d.config_path).parent)), ("user", "svc")])
    assert store.load().record("n1", "api") is None          # no record yet: the dirs wait for it
    r.record(d, RecordStatus.IN_PROGRESS, None)
    rec = store.load().record("n1", "api")
    assert rec is not None and rec.status == RecordStatus.IN_PROGRESS and rec.version == "2.0"
    assert rec.created_dirs == [d.service_dir, d.service_dir + "/releases"]
    assert rec.env_hash == d.secrets_hash("salt") and "v" not in (rec.env_hash or "")
    owned = store.load().owned["n1"]
    assert {(o.kind, o.name, tuple(o.services)) for o in owned} == {
        ("dir", str(Path(d.config_path).parent), ("api",)), ("user", "svc", ("api",))}
    assert r.mine("n1", "api") == {str(Path(d.config_path).parent), d.service_dir, d.service_dir + "/releases"}
    r.record(d, RecordStatus.APPLIED, "1.0", in_place=True)  # a later record keeps what was created
    rec = store.load().record("n1", "api")
    assert rec is not None and rec.created_dirs == [d.service_dir, d.service_dir + "/releases"]
    assert rec.previous_version == "1.0" and rec.in_place and rec.serial == store.load().serial


def test_a_record_from_before_ownership_tracking_stays_so(tmp_path: Path) -> None:
    r, store = _rec(tmp_path)
    d = _svc(tmp_path)
    old = record_of(d, "salt", RecordStatus.APPLIED, None, 1)
    old.created_dirs = None
    r.state.hosts["n1"] = {"api": old}
    r.record(d, RecordStatus.APPLIED, None, version="1.5")
    rec = store.load().record("n1", "api")
    assert rec is not None and rec.created_dirs is None and rec.version == "1.5"


def test_set_status_changes_only_what_it_names_and_forget_releases_what_was_shared(tmp_path: Path) -> None:
    r, store = _rec(tmp_path)
    a, b = _svc(tmp_path, "api"), _svc(tmp_path, "web")
    shared = str(Path(a.config_path).parent)
    for d in (a, b):
        r.ensured("n1", d, [("dir", shared)] if d is a else [])
        r.record(d, RecordStatus.APPLIED, None)
    r.set_status("n1", "api", RecordStatus.ROLLED_BACK, version="1.0")
    r.set_status("n1", "nope", RecordStatus.FAILED)           # no record: nothing happens
    rec = store.load().record("n1", "api")
    assert rec is not None and rec.status == RecordStatus.ROLLED_BACK and rec.version == "1.0"
    assert rec.config_text == a.config_text
    assert ownership.find(store.load().owned["n1"], "dir", shared).services == ["api", "web"]  # type: ignore[union-attr]
    r.forget("n1", "api")
    assert store.load().record("n1", "api") is None
    assert ownership.find(store.load().owned["n1"], "dir", shared).services == ["web"]  # type: ignore[union-attr]
    r.forget("n1", "web", removed={shared})
    st = store.load()
    assert "n1" not in st.hosts and "n1" not in st.owned


def test_history_names_the_command_the_change_and_the_result(tmp_path: Path) -> None:
    r, store = _rec(tmp_path)
    r.command = "rollback"
    c = Change("n1/api", "n1", "api", Action.REPLACE, "rollback 2.0 → 1.0", Effect.RESTART,
               from_version="2.0", to_version="1.0")
    r.history(c, "replaced", "HTTP 200 after 1s")
    (entry,) = store.history()
    assert {k: entry[k] for k in ("command", "host", "service", "action", "from", "to", "result", "detail")} == {
        "command": "rollback", "host": "n1", "service": "api", "action": "replace", "from": "2.0", "to": "1.0",
        "result": "replaced", "detail": "HTTP 200 after 1s"}


def _observed(releases: list[str], exists: bool = True) -> Any:
    return SimpleNamespace(error=None, services={"api": SimpleNamespace(exists=exists, releases=releases)})


def test_settle_adopts_services_that_need_no_change_and_keeps_the_rest(tmp_path: Path) -> None:
    r, store = _rec(tmp_path)
    d: DesiredService = _svc(tmp_path)
    web = _svc(tmp_path, "web")
    run = SimpleNamespace(desired={"n1": {"api": d, "web": web}}, observed={"n1": _observed(["1.0", "2.0"])},
                          targets=None)
    changing = Change("n1/web", "n1", "web", Action.CREATE, "", Effect.START)
    r.settle(run, Plan(changes=[changing]))  # type: ignore[arg-type]
    st = store.load()
    rec = st.record("n1", "api")
    assert rec is not None and rec.status == RecordStatus.APPLIED and rec.created_dirs == []
    assert st.record("n1", "web") is None                   # it changes: apply records it
    serial = st.serial
    r.settle(run, Plan(changes=[changing]))  # type: ignore[arg-type]
    assert store.load().serial == serial                    # already agrees: nothing written
    run.observed = {"n1": _observed([], exists=False)}
    r2, store2 = _rec(tmp_path / "other")
    r2.settle(run, Plan())  # type: ignore[arg-type]
    assert store2.load().hosts == {}                        # not on the host: nothing to adopt
