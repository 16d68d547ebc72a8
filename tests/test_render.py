"""Fast tests of the plan renderers (text, JSON, Markdown) on plans built from the dataclasses; no hosts."""

from __future__ import annotations

import io
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.plan import ACTIONS, FORMAT_VERSION, Change, FieldChange, Plan
from reconciler.render import render, render_json, render_markdown, render_text

MASK = "(sensitive)"
CLOSING = re.compile(
    r"^Plan: \d+ to create, \d+ to update, \d+ to replace, \d+ to delete, \d+ to restart, \d+ to reload\."
    r"( \d+ drifted\.)?$"
)


def change(service: str, action: str, *fields: FieldChange, host: str = "node1", wave: int = 1,
           reason: str = "", effect: str = "restart") -> Change:
    return Change(f"{host}/{service}", host, service, action, reason or f"{action} {service}", effect,
                  wave=wave, fields=list(fields), drift=any(f.kind == "drift" for f in fields))


def sample_plan() -> Plan:
    """2 create, 1 update, 1 replace, 1 restart; one drifted change."""
    return Plan(
        changes=[
            change("orchestrator", "replace", FieldChange("version", "5.0.0", "5.0.1"),
                   reason="version 5.0.0 → 5.0.1"),
            change("control-center", "update", FieldChange("config.server.workers", 8, 16, "drift"),
                   FieldChange("config.log.level", "info", "debug"),
                   FieldChange("secrets", MASK, MASK, sensitive=True), wave=2,
                   reason="config.server.workers 8 → 16 (changed outside recon)"),
            change("mcp-server", "create", FieldChange("version", None, "5.0.1"), wave=2, effect="start"),
            change("ai-service", "create", FieldChange("version", None, "5.0.1"), wave=3, effect="start"),
            change("api-gateway", "restart", FieldChange("state", "failed", "active"), wave=3),
        ],
        waves=[["orchestrator"], ["control-center", "mcp-server"], ["ai-service", "api-gateway"]],
        errors=["node3: ssh: connect to host 10.0.0.7 port 22: Connection refused"],
        notes=["node1: foo.service exists but recon does not manage it (left alone)"],
        ignored_drift=["node1/vault-service"],
        fingerprints={"spec": "ab" * 32},
    )


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# --------------------------------------------------------------------------------------------- text
def test_text_closing_line_counts() -> None:
    out = render_text(sample_plan(), color=False)
    assert lines(out)[-1] == ("Plan: 2 to create, 1 to update, 1 to replace, 0 to delete, 1 to restart, "
                              "0 to reload. 1 drifted.")
    assert out.startswith("recon will perform the following actions:")
    assert all(CLOSING.match(ln) for ln in lines(out)[-1:])


def test_text_closing_line_without_drift_and_no_changes() -> None:
    out = render_text(Plan(), color=False)
    assert out.startswith("No changes. Your hosts match the spec.")
    assert lines(out)[-1] == ("Plan: 0 to create, 0 to update, 0 to replace, 0 to delete, 0 to restart, "
                              "0 to reload.")
    assert CLOSING.match(lines(out)[-1])


def test_text_plain_has_no_ansi_and_color_has() -> None:
    plan = sample_plan()
    plan.changes[1].fields.append(FieldChange("config.motd", "\x1b[31mred\x1b[0m", "\x9b2J plain"))
    plain = render_text(plan, color=False)
    assert "\x1b" not in plain and "\x9b" not in plain
    assert "\\x1b[31mred" in plain  # a control character in a value is shown escaped, never sent
    colored = render_text(plan, color=True)
    assert "\x1b[" in colored
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored).splitlines()[-1].startswith("Plan: 2 to create")


def test_text_waves_marks_fields_and_effects() -> None:
    out = render_text(sample_plan(), color=False)
    assert "# wave 1: orchestrator" in out
    assert "# wave 2: control-center, mcp-server" in out
    assert "  ± node1/orchestrator: replace — version 5.0.0 → 5.0.1" in out
    assert "  + node1/mcp-server: create" in out
    assert "  ↻ node1/api-gateway: restart" in out
    assert "      ~ config.log.level: info → debug" in out
    assert "      + version: 5.0.1" in out
    assert "→ will restart" in out and "→ will start" in out
    assert "      ~ secrets: (sensitive) → (sensitive)" in out
    assert "Errors: 1 host could not be observed" in out and "✗ node3: ssh" in out
    assert "Notes:" in out and "foo.service" in out
    assert "Ignored drift: 1 service" in out


def test_text_drift_fields_are_marked_as_drift() -> None:
    out = render_text(sample_plan(), color=False)
    drift_line = next(ln for ln in out.splitlines() if "config.server.workers: 8 → 16" in ln)
    assert "(drift: changed outside recon)" in drift_line
    desired_line = next(ln for ln in out.splitlines() if "config.log.level:" in ln)
    assert "drift" not in desired_line
    assert "[drift]" in next(ln for ln in out.splitlines() if "node1/control-center: update" in ln)


def test_text_refresh_only_header() -> None:
    plan = Plan(changes=[change("orchestrator", "update", FieldChange("config.a", 1, 2, "drift"))],
                refresh_only=True)
    out = render_text(plan, color=False)
    assert out.startswith("Drift:")
    assert lines(out)[-1].endswith("1 drifted.")


def test_text_summarises_long_and_multiline_values() -> None:
    blob = {"routes": [{"path": f"/api/v{i}", "upstream": f"http://10.0.0.{i}:8080"} for i in range(60)]}
    text = "\n".join(f"line {i} of a certificate-like blob" for i in range(40))
    plan = Plan(changes=[change("api-gateway", "update", FieldChange("config.routes", None, blob),
                                FieldChange("config.banner", text, text + "\nmore"),
                                FieldChange("config.tail", "x" * 300 + "a", "x" * 300 + "b"))])
    out = render_text(plan, color=False, width=100)
    assert all(len(ln) <= 100 for ln in out.splitlines())
    assert "/api/v59" not in out and "line 39" not in out
    assert "(60 items" in out or "(1 key" in out
    assert "(41 lines" in out and "line 41: more" in out  # the first line that differs
    tail = next(ln for ln in out.splitlines() if "config.tail" in ln)
    assert "a" in tail.split("→")[0][-3:] and tail.rstrip().endswith("b")


def test_text_narrow_width_does_not_fail() -> None:
    out = render_text(sample_plan(), color=False, width=40)
    assert "Plan: 2 to create" in out


# --------------------------------------------------------------------------------------------- JSON
def test_json_round_trips_and_has_format_version_first() -> None:
    plan = sample_plan()
    text = render_json(plan)
    assert text.startswith('{\n  "format_version": ')
    doc = json.loads(text)
    assert next(iter(doc)) == "format_version" and doc["format_version"] == FORMAT_VERSION
    assert Plan.from_dict(doc).to_dict() == plan.to_dict()
    assert doc["summary"] == {**plan.counts(), "drift": 1, "total": 5}
    first = doc["changes"][0]
    assert list(first)[:9] == ["address", "host", "service", "action", "effect", "reason", "wave", "drift",
                               "from_version"]
    assert set(first["fields"][0]) == {"path", "before", "after", "kind", "sensitive", "part", "spec_path"}
    assert render_json(plan) == text  # stable
    assert render(plan, "json") == text


def test_json_handles_non_json_values() -> None:
    plan = Plan(changes=[change("a", "update", FieldChange("config.x", float("nan"), {1: (1, 2)}))])
    doc = json.loads(render_json(plan))
    assert doc["changes"][0]["fields"][0] == {"path": "config.x", "before": "nan", "after": {"1": [1, 2]},
                                              "kind": "desired", "sensitive": False, "part": "unit",
                                              "spec_path": None}


# ----------------------------------------------------------------------------------------- Markdown
def big_plan(n: int = 500) -> Plan:
    changes = []
    for i in range(n):
        svc = f"svc-{i:03d}"
        changes.append(change(
            svc, ACTIONS[i % len(ACTIONS)],
            FieldChange("version", "1.0.0", "1.0.1"),
            FieldChange("config.server.workers", 8, 16, "drift" if i % 7 == 0 else "desired"),
            FieldChange("config.routes", {"r": ["x" * 50] * 20}, {"r": ["y" * 50] * 20}),
            FieldChange("config.motd", "a\nb\nc" * 30, "d\ne" * 30),
            FieldChange("secrets", MASK, MASK, sensitive=True),
            host=f"node{i % 5}", wave=i % 4 + 1, reason=f"version 1.0.0 → 1.0.1 | `{svc}`"))
    return Plan(changes=changes, notes=[f"note {i}" for i in range(3)])


def test_markdown_large_plan_is_truncated_under_the_limit() -> None:
    out = render_markdown(big_plan(500))
    assert len(out) <= 65000
    assert "not shown (comment size limit); run `recon plan` for the full plan._" in out
    assert out.rstrip().endswith("for the full plan._")
    assert out.startswith("### recon plan: ")


def test_markdown_drops_details_before_table_rows() -> None:
    plan = big_plan(60)
    full = render_markdown(plan, limit=10**9)
    assert full.count("<details>") == 60
    cut = render_markdown(plan, limit=len(full) // 2)
    assert len(cut) <= len(full) // 2
    assert 0 < cut.count("<details>") < 60
    assert cut.count("| node") == 60  # the whole table is kept
    assert re.search(r"_… details of \d+ more changes not shown", cut)
    tiny = render_markdown(plan, limit=3000)
    assert len(tiny) <= 3000 and "<details>" not in tiny
    assert 0 < tiny.count("| node") < 60
    assert re.search(r"_… \d+ more changes not shown", tiny)


def test_markdown_small_plan_is_whole_and_escapes_cells() -> None:
    plan = sample_plan()
    plan.changes[0].reason = "a | b `c`"
    out = render_markdown(plan)
    assert "not shown" not in out
    assert out.startswith("### recon plan: 2 to create, 1 to update, 1 to replace, 0 to delete, "
                          "1 to restart, 0 to reload, 1 drifted")
    assert "| address | action | reason | drift |" in out
    assert r"a \| b \`c\`" in out
    assert out.count("<details>") == 5 and "```diff" in out
    assert "~ config.server.workers: 8 → 16   # drift: changed outside recon" in out
    assert "+ version: 5.0.1" in out
    assert "could not be observed" in out and "foo.service" in out


def test_markdown_no_changes() -> None:
    out = render_markdown(Plan(), title="review")
    assert out.startswith("### review: no changes") and "|" not in out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 40), limit=st.integers(120, 6000))
def test_markdown_never_exceeds_the_limit(n: int, limit: int) -> None:
    plan = big_plan(n)
    plan.errors = ["host x: unreachable " * 5] * (n % 3)
    out = render_markdown(plan, limit=limit)
    assert len(out) <= limit


# ------------------------------------------------------------------- secrets: defensive masking
CANARY = "CANARY-S3CRET-7f3a"  # uppercase/digits: cannot be built from the alphabet of the other strings
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ./_-:\n", min_size=0, max_size=30)
values = st.one_of(st.none(), words, st.integers(-5, 10**6), st.lists(words, max_size=4),
                   st.dictionaries(words, words, max_size=3))
kinds = st.sampled_from(["desired", "drift"])


@st.composite
def plans_with_unmasked_secrets(draw: st.DrawFn) -> Plan:
    changes = []
    for i in range(draw(st.integers(1, 6))):
        fields = [FieldChange(f"config.k{j}", draw(values), draw(values), draw(kinds))
                  for j in range(draw(st.integers(0, 3)))]
        # A secret the plan forgot to mask: the renderers must mask it themselves.
        secret_before = draw(st.sampled_from([CANARY, None, f"x{CANARY}x"]))
        fields.insert(draw(st.integers(0, len(fields))),
                      FieldChange("secrets.VAULT_TOKEN", secret_before, CANARY, draw(kinds), sensitive=True))
        changes.append(change(f"s{i}", draw(st.sampled_from(ACTIONS)), *fields, wave=draw(st.integers(0, 3)),
                              reason=draw(words) or "r"))
    return Plan(changes=changes, refresh_only=draw(st.booleans()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans_with_unmasked_secrets(), color=st.booleans())
def test_secrets_are_never_printed(plan: Plan, color: bool) -> None:
    outputs = [render_text(plan, color=color), render_json(plan), render_markdown(plan)]
    for out in outputs:
        assert CANARY not in out
        assert MASK in out
    doc = json.loads(outputs[1])
    for c in doc["changes"]:
        for f in c["fields"]:
            if f["sensitive"]:
                assert f["before"] in (MASK, None) and f["after"] == MASK
    assert CANARY in repr(plan)  # the renderers did not mutate the plan to hide it


def test_text_is_as_wide_as_the_terminal_and_unwrapped_in_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """COLUMNS (or the terminal's width) sets the width; a pipe or file gets lines that never wrap."""
    from reconciler.render.terminal import UNWRAPPED, output_width

    long_host = "node-with-a-rather-long-name-in-a-big-fleet"
    c = change("control-center", "update", FieldChange("config.server.workers", 8, 16, "drift"), host=long_host)
    plan = Plan(changes=[c], errors=["node9: cannot connect to host 'node9' (root@10.0.0.9:22): Unable to connect "
                                     "to port 22 on 10.0.0.9 after trying for a while"])
    monkeypatch.setenv("COLUMNS", "200")
    assert output_width() == 200
    wide = render_text(plan, color=False)
    assert any("[drift]" in ln and long_host in ln for ln in wide.splitlines())
    assert any("Unable to connect to port 22 on 10.0.0.9 after" in ln for ln in wide.splitlines())
    monkeypatch.delenv("COLUMNS")
    assert output_width(io.StringIO()) == UNWRAPPED       # not a terminal
    narrow = render_text(plan, color=False, width=60)
    assert not any("[drift]" in ln and long_host in ln for ln in narrow.splitlines())


def test_progress_shows_a_waiting_health_gate_every_few_seconds_off_a_terminal(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    from reconciler.outcome import Event, EventKind
    from reconciler.render import progress

    clock = iter([0.0, 0.5, 1.0, 3.0, 6.5, 7.0, 8.0]).__next__
    monkeypatch.setattr(progress.time, "monotonic", clock)
    buf = io.StringIO()
    p = progress.Progress(color=False, file=buf, live=False)                      # t0 = 0.0
    for msg in ("waiting for health: HTTP 503 (0s)", "waiting for health: HTTP 503 (1s)",
                "waiting for health: HTTP 503 (3s)", "waiting for health: HTTP 503 (6s)"):
        p(Event(EventKind.WAIT, "node1", "control-center", msg))                          # 0.5, 1.0, 3.0, 6.5
    p(Event(EventKind.OK, "node1", "control-center", "updated, healthy (HTTP 200 after 7s)"))   # 7.0
    out = buf.getvalue().splitlines()
    waits = [ln for ln in out if "waiting for health" in ln]
    assert [w.split("(")[-1] for w in waits] == ["0s)", "6s)"]        # the first, then one 5 s later
    assert "node1/control-center: waiting for health: HTTP 503" in waits[0]
    assert out[-1].endswith("✓ node1/control-center: updated, healthy (HTTP 200 after 7s)")


def test_progress_live_wait_lines_vanish_when_the_gate_ends() -> None:
    from reconciler.outcome import Event, EventKind
    from reconciler.render.progress import Progress

    buf = io.StringIO()
    p = Progress(color=True, file=buf, live=True)
    p(Event(EventKind.WAIT, "node1", "api", "waiting for health: no answer (2s)"))
    assert p.live is not None and "node1/api" in next(iter(p.waiting.values()))
    p(Event(EventKind.OK, "node1", "api", "created, healthy"))
    assert p.live is None and not p.waiting
    assert "created, healthy" in buf.getvalue()


def test_history_columns_are_aligned() -> None:
    from reconciler.render.history import render_history_text

    entries = [{"time": "2026-12-02T03:30:53.1Z", "serial": 9, "user": "root", "machine": "vm", "host": "node1",
                "service": "control-center", "action": "create", "to": "5.0.0", "result": "created",
                "detail": "HTTP 200 after 1s"},
               {"time": "2026-12-02T03:31:00.2Z", "serial": 120, "user": "ci-runner", "machine": "build-7",
                "host": "node12", "service": "api", "action": "replace", "from": "5.0.0", "to": "5.0.1",
                "result": "rolled-back", "detail": "HTTP 503 after 15s"}]
    rows = render_history_text(entries).splitlines()
    assert rows[0].split() == ["TIME", "SERIAL", "WHO", "ADDRESS", "ACTION", "VERSION", "RESULT", "DETAIL"]
    for col in ("SERIAL", "WHO", "ADDRESS", "ACTION", "VERSION", "RESULT", "DETAIL"):
        at = rows[0].index(col)
        assert all(r[at - 2:at] == "  " and r[at] != " " for r in rows[1:]), (col, rows)
