"""Fast unit tests of the spec stage (no hosts): loading with origins, layering, defaults, the JSON
Schema, semantic checks, explain. Every problem is checked for its file, line, spec path, and what
was expected and found; line numbers are looked up in the spec text, never guessed.
"""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from pathlib import Path

import pytest

from reconciler.errors import Origin, Problem, SpecError
from reconciler.explain import explain, parse_address
from reconciler.spec import load_merged, load_spec
from reconciler.spec.checks import find_cycle
from reconciler.spec.loader import MAX_DEPTH, format_path, load_file, parse_text
from reconciler.spec.merge import apply_defaults
from reconciler.spec.schema import load_schema, schema_path
from reconciler.spec.units import parse_count, parse_duration, parse_percent, parse_size

REPO = Path(__file__).resolve().parents[1]
ART_BYTES = b"#!/bin/sh\necho stand-in\n"
ART_SHA = hashlib.sha256(ART_BYTES).hexdigest()
NAME_EXPECTED = "a lowercase name: a letter, then letters, digits or '-' (at most 63)"


# ---------------------------------------------------------------- helpers


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} not in text"
    return hits[nth - 1]


def col_of(text: str, needle: str) -> int:
    line = text.splitlines()[line_of(text, needle) - 1]
    return line.index(needle) + 1


def spec_text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n").replace("SHA", ART_SHA)


@pytest.fixture
def write(tmp_path: Path):
    """write(name, yaml) -> path (str); an artifact `art.bin` with sha ART_SHA sits beside it."""
    (tmp_path / "art.bin").write_bytes(ART_BYTES)

    def _write(name: str, text: str) -> str:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(spec_text(text), encoding="utf-8")
        return str(p)

    return _write


def problems(*files: str, check_artifacts: bool = True) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        load_spec(list(files), check_artifacts=check_artifacts)
    assert info.value.problems, "a SpecError carries its problems"
    return info.value.problems


def at(found: list[Problem], path: str) -> Problem:
    """The one problem at spec path `path`."""
    hits = [p for p in found if p.path == path]
    assert len(hits) == 1, f"want one problem at {path}, got: {[p.render() for p in found]}"
    return hits[0]


def where(p: Problem) -> tuple[str, int]:
    assert p.origin is not None
    return p.origin.file, p.origin.line


GOOD = """
# yaml-language-server: $schema=../schemas/recon-spec.v1.json
version: 1
hosts:
  n1: {address: 10.0.0.1}
  n2: {address: 10.0.0.2, user: root}
defaults:
  user: svc
  hosts: [n1]
  limits: {memory_max: 1G, memory_high: 768M, tasks_max: 100}
  restart: {policy: on-failure, delay_s: 5}
  args: ["--config", "{config_path}"]
  rollout: {batch_size: 25%, max_failures: 1}
services:
  api:
    version: "1.0.0"
    artifact: {path: art.bin, sha256: SHA}
    port: 8080
    depends_on: [db]
    limits: {memory_max: 2G, cpu_quota: 150%}
    config:
      server: {port: 8080, workers: 4}
  db:
    version: "2.0.0"
    artifact: {path: art.bin, sha256: SHA}
    port: 8081
    hosts: [n1, n2]
"""


# ---------------------------------------------------------------- loading and origins


def test_good_spec_builds(write):
    spec = load_spec([write("good.yaml", GOOD)])
    assert sorted(spec.services) == ["api", "db"]
    api = spec.services["api"]
    assert api.limits.memory_max == 2 * 1024**3
    assert api.limits.memory_high == 768 * 1024**2  # from defaults
    assert api.limits.cpu_quota == 150.0
    assert api.user == "svc" and api.hosts == ("n1",) and api.depends_on == ("db",)
    assert spec.services["db"].hosts == ("n1", "n2")
    assert api.restart_delay_s == 5.0
    assert (api.batch_size, api.max_failures) == ("25%", 1)
    assert api.artifact_path is not None and api.artifact_path.read_bytes() == ART_BYTES


def test_every_value_remembers_file_line_and_column(write):
    f = write("good.yaml", GOOD)
    text = Path(f).read_text()
    merged = load_merged([f])
    o = merged.origins[("services", "api", "port")]
    assert (o.file, o.line, o.col) == (f, line_of(text, "port: 8080"), col_of(text, "port: 8080"))
    o = merged.origins[("services", "db", "hosts", 1)]
    assert (o.line, o.col) == (line_of(text, "hosts: [n1, n2]"), col_of(text, "n2]"))
    assert merged.origins[("services", "api", "config", "server", "workers")].line == line_of(text, "workers: 4")
    assert merged.origin_of(("services", "api", "config", "server", "nothing", "here")).line == line_of(
        text, "server: {port")
    assert str(merged.origins[("version",)]) == f"{f}:{line_of(text, 'version: 1')}:1"


def test_json_spec_is_accepted_with_lines(write, tmp_path):
    doc = {
        "version": 1,
        "hosts": {"n1": {"address": "10.0.0.1"}},
        "services": {"api": {"version": "1.0.0", "artifact": {"path": "art.bin", "sha256": ART_SHA},
                             "hosts": ["n1"], "port": 8080, "health": {"timeout_s": 1.5e1}}},
    }
    text = json.dumps(doc, indent=2).replace("15.0", "1.5e1")
    p = tmp_path / "spec.json"
    p.write_text(text)
    (tmp_path / "art.bin").write_bytes(ART_BYTES)
    spec = load_spec([str(p)])
    assert spec.services["api"].port == 8080
    assert spec.services["api"].health_timeout_s == 15.0  # JSON's 1.5e1 is a number, not a string
    merged = load_merged([str(p)])
    assert merged.origins[("services", "api", "port")].line == line_of(text, '"port": 8080')
    # a broken JSON file gets its line and column too
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "version": 1,\n  "services": {\n    "a": [1, 2\n  }\n}\n')
    (p1,) = problems(str(bad))
    assert p1.message.startswith("malformed YAML") and p1.origin.line == 5 and p1.origin.col == 3


def test_json_with_tabs_and_escapes(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('{\n\t"version": 1,\n\t"x": "a\\/b\\u00e9",\n\t"n": -0.5E+2\n}\n')
    layer = load_file(p)
    assert layer.data == {"version": 1, "x": "a/bé", "n": -50.0}
    assert layer.origins[("n",)].line == 4


def test_duplicate_key_is_reported_with_both_lines_known(write):
    f = write("dup.yaml", """
        version: 1
        services:
          a:
            port: 1
            version: "1"
            port: 2
    """)
    text = Path(f).read_text()
    (p,) = problems(f)
    assert p.message == "duplicate key 'port'"
    assert p.path == "services.a.port"
    assert where(p) == (f, line_of(text, "port: 2"))
    assert p.expected == "each key once in a mapping"


def test_yaml_merge_keys_override_without_duplicate_complaints(tmp_path):
    text = spec_text("""
        base: &base {user: a, keep_releases: 3, hardening: {private_tmp: true}}
        other: &other {user: b, type: simple}
        svc:
          <<: [*base, *other]
          keep_releases: 5
    """)
    layer = parse_text(text, "m.yaml")
    # own keys override merged ones; of several merged mappings, the first wins
    assert layer.data["svc"] == {"user": "a", "keep_releases": 5, "hardening": {"private_tmp": True},
                                 "type": "simple"}
    assert layer.origins[("svc", "keep_releases")].line == line_of(text, "keep_releases: 5")
    assert layer.origins[("svc", "user")].line == line_of(text, "base: &base")  # where it was written
    # each alias expansion is a fresh object: changing one place does not change another
    layer.data["svc"]["hardening"]["private_tmp"] = False
    assert layer.data["base"]["hardening"]["private_tmp"] is True


@pytest.mark.parametrize(("text", "line", "col", "words"), [
    ("version: 1\nservices: [a, b\n", 2, 16, "flow sequence"),  # the end of the file: after `b`
    ("version: 1\nservices:\n  a: 1\n b: 2\n", 4, 2, "did not find expected key"),
    ("version: 1\nservices:\n\ta: 1\n", 3, 1, "cannot start any token"),
    ("a: 'unterminated\n", 1, 17, "quoted scalar"),
    ("a: *nowhere\n", 1, 4, "undefined alias"),
    ("a: b: c\n", 1, 5, "mapping values are not allowed"),
])
def test_malformed_yaml_gets_line_and_column(write, text, line, col, words):
    f = write("bad.yaml", text)
    (p,) = problems(f)
    assert p.message.startswith("malformed YAML")
    assert words in p.message
    assert (p.origin.file, p.origin.line, p.origin.col) == (f, line, col)
    assert p.path == ""


def test_control_character_gets_line_and_column(write):
    f = write("nul.yaml", "version: 1\nabc: é\x00\n")
    (p,) = problems(f)
    assert "#x0000" in p.message and (p.origin.line, p.origin.col) == (2, 7)


def test_empty_file_alone_and_as_a_layer(write):
    empty = write("empty.yaml", "")
    found = problems(empty)
    assert [(p.path, p.message) for p in found] == [("", "`services` is required"), ("", "`version` is required")]
    assert all(where(p) == (empty, 1) for p in found)
    # comments only: an empty override layer is harmless
    base = write("good.yaml", GOOD)
    assert len(load_spec([base, write("c.yaml", "# nothing here\n")]).services) == 2


@pytest.mark.parametrize(("text", "found"), [
    ("- a\n- b\n", "a list"), ("just text\n", "a string"), ("42\n", "a number"), ("~\n", "null"),
])
def test_file_that_is_not_a_mapping(write, text, found):
    f = write("list.yaml", text)
    (p,) = problems(f)
    assert p.message == "a spec file must be a mapping at the top"
    assert where(p) == (f, 1) and p.found == found and "mapping" in p.expected


def test_non_utf8_file_gets_line_and_column(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("version: 1\nservices:\n  a: {description: caf\xe9}\n".encode("latin-1"))
    (prob,) = problems(str(p))
    assert prob.message == "the file is not UTF-8 text"
    assert (prob.origin.line, prob.origin.col) == (3, len("  a: {description: caf") + 1)
    assert prob.expected == "UTF-8" and prob.found == "byte 0xe9"


def test_missing_file_and_every_file_problem_in_one_run(write, tmp_path):
    good = write("good.yaml", GOOD)
    bad = write("bad.yaml", "a: [\n")
    missing = str(tmp_path / "nope.yaml")
    found = problems(good, missing, bad, str(tmp_path))
    assert [p.origin.file for p in found] == [missing, bad, str(tmp_path)]
    assert found[0].message == "spec file not found" and found[0].origin.line == 0
    assert found[1].message.startswith("malformed YAML") and found[1].origin.line == 1
    assert found[2].message.startswith("cannot read spec file")


def test_no_files():
    with pytest.raises(SpecError, match="no spec file given"):
        load_merged([])


def test_several_documents(write):
    f = write("two.yaml", "version: 1\n---\nversion: 2\n")
    (p,) = problems(f)
    assert "one YAML document" in p.message and where(p) == (f, 3)


@pytest.mark.parametrize(("text", "message", "line"), [
    ("a: &a [1, *a]\n", "recursive alias", 1),
    ("a: &a {b: {c: *a}}\n", "recursive alias", 1),
    ("a: !!python/object:os.system {}\n", "unsupported YAML tag !!python/object:os.system", 1),
    ("a:\n  b: !!binary aGVsbG8=\n", "unsupported YAML tag !!binary", 2),
    ("a: !!set {x, y}\n", "unsupported YAML tag !!set", 1),
    ("a: !custom x\n", "unsupported YAML tag !custom", 1),
    ("a:\n  when: 2001-13-45\n", "cannot read value: month must be in 1..12", 2),
    ("a: !!int xyz\n", "cannot read value", 1),
    ("1: x\n", "mapping keys must be strings", 1),
    ("x: 1\n? [a, b]\n: c\n", "mapping keys must be strings", 2),
    ("env:\n  on: 1\n", "mapping keys must be strings", 2),
    ("a: {<<: 1}\n", "`<<` merges a mapping", 1),
    ("a: " + "9" * 5000 + "\n", "number too large", 1),
    ("a: 0x" + "f" * 1000 + "\n", "number too large", 1),
])
def test_odd_yaml_is_a_problem_not_a_crash(write, text, message, line):
    f = write("odd.yaml", text)
    found = problems(f)
    assert any(message in p.message and where(p) == (f, line) for p in found), [p.render() for p in found]


def test_alias_bomb_and_deep_nesting_are_refused(write):
    rows = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (p,) = problems(write("bomb.yaml", "\n".join(rows) + "\n"))
    assert "too large once aliases are expanded" in p.message
    deep = "a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    (p,) = problems(write("deep.yaml", deep))
    assert p.message == "nested too deeply" and p.origin.line == 1


# ---------------------------------------------------------------- layering


def test_layering_mappings_merge_scalars_and_lists_replace_later_wins(write):
    base = write("base.yaml", GOOD)
    mid = write("mid.yaml", """
        version: 1
        services:
          api:
            port: 9000
            limits: {memory_max: 3G}
            args: ["--mid"]
    """)
    top = write("top.yaml", """
        version: 1
        services:
          api:
            port: 9001
            args: ["--top", "--x"]
            config:
              server: {workers: 16}
    """)
    merged = load_merged([base, mid, top])
    api = merged.data["services"]["api"]
    assert api["port"] == 9001  # later wins
    assert api["args"] == ["--top", "--x"]  # lists replace
    assert api["limits"] == {"memory_max": "3G", "cpu_quota": "150%"}  # mappings merge
    assert api["config"]["server"] == {"port": 8080, "workers": 16}
    assert api["version"] == "1.0.0"
    ttext, mtext, btext = (Path(f).read_text() for f in (top, mid, base))
    assert merged.origins[("services", "api", "port")].file == top
    assert merged.origins[("services", "api", "port")].line == line_of(ttext, "port: 9001")
    assert merged.origins[("services", "api", "limits", "memory_max")].file == mid
    assert merged.origins[("services", "api", "limits", "cpu_quota")].file == base
    assert merged.origins[("services", "api", "args", 1)].line == line_of(ttext, '"--x"')
    overrode = merged.overridden[("services", "api", "port")]
    assert [(o.file, o.line, v) for o, v in overrode] == [
        (base, line_of(btext, "port: 8080"), 8080), (mid, line_of(mtext, "port: 9000"), 9000)]
    assert [v for _, v in merged.overridden[("services", "api", "args")]] == [["--mid"]]
    spec = load_spec([base, mid, top])
    assert spec.services["api"].port == 9001 and spec.services["api"].limits.memory_max == 3 * 1024**3


def test_a_scalar_can_replace_a_mapping_and_back(write):
    a = write("a.yaml", "version: 1\nx: {p: {q: 1}}\n")
    b = write("b.yaml", "x: 5\n")
    c = write("c.yaml", "x: {p: {r: 2}}\n")
    merged = load_merged([a, b, c])
    assert merged.data["x"] == {"p": {"r": 2}}
    assert ("x", "p", "q") not in merged.origins
    assert [v for _, v in merged.overridden[("x",)]] == [{"p": {"q": 1}}, 5]


def test_defaults_merge_under_every_service_with_origins(write):
    f = write("good.yaml", GOOD)
    text = Path(f).read_text()
    merged = load_merged([f])
    apply_defaults(merged)
    api = merged.data["services"]["api"]
    assert api["limits"] == {"memory_max": "2G", "memory_high": "768M", "tasks_max": 100, "cpu_quota": "150%"}
    assert api["user"] == "svc"
    # a value from defaults reports the defaults line, and says so
    o = merged.origins[("services", "api", "limits", "memory_high")]
    assert (o.file, o.line, o.at) == (f, line_of(text, "memory_high: 768M"), ("defaults", "limits", "memory_high"))
    assert merged.origins[("services", "db", "user")].line == line_of(text, "user: svc")
    # the service's value overrides the default, which is remembered
    o = merged.origins[("services", "api", "limits", "memory_max")]
    assert o.line == line_of(text, "memory_max: 2G")
    (prev, value), = merged.overridden[("services", "api", "limits", "memory_max")]
    assert (prev.line, value, prev.at) == (line_of(text, "memory_max: 1G"), "1G", ("defaults", "limits", "memory_max"))
    # lists from defaults are replaced, not appended to
    assert merged.data["services"]["db"]["hosts"] == ["n1", "n2"]
    # the mapping itself is where the service wrote it
    assert merged.origins[("services", "api", "limits")].line == line_of(text, "limits: {memory_max: 2G")


def test_defaults_from_an_override_file(write):
    base = write("good.yaml", GOOD)
    over = write("over.yaml", """
        defaults:
          limits: {memory_high: 512M}
          restart: {delay_s: 1}
    """)
    merged = load_merged([base, over])
    apply_defaults(merged)
    o = merged.origins[("services", "db", "limits", "memory_high")]
    assert o.file == over and o.line == 2
    assert [(p.file, v) for p, v in merged.overridden[("services", "db", "limits", "memory_high")]] == [
        (base, "768M")]
    assert load_spec([base, over]).services["db"].restart_delay_s == 1.0


# ---------------------------------------------------------------- explain


def test_explain_reports_value_file_line_and_overrides(write):
    base = write("good.yaml", GOOD)
    over = write("over.yaml", """
        defaults:
          limits: {memory_max: 512M}
        services:
          api:
            limits: {memory_max: 256M}
    """)
    btext, otext = Path(base).read_text(), Path(over).read_text()

    def loc(f: str, text: str, needle: str) -> str:
        return f"{f}:{line_of(text, needle)}:{col_of(text, needle)}"

    out = explain([base, over], "api.limits.memory_max").splitlines()
    assert out == [
        'services.api.limits.memory_max = "256M"',
        f"  set by    {loc(over, otext, 'memory_max: 256M')}",
        f'  overrode  {loc(base, btext, "memory_max: 2G")}  "2G"',
        f'  overrode  {loc(over, otext, "memory_max: 512M")}  "512M"  (via defaults.limits.memory_max)',
        f'  overrode  {loc(base, btext, "memory_max: 1G")}  "1G"  (via defaults.limits.memory_max)',
    ]
    out = explain([base, over], "api.limits").splitlines()
    assert out[0].startswith('services.api.limits = {"memory_max": "256M", "memory_high": "768M"')
    assert out[1] == f"  set by    {loc(over, otext, 'limits: {memory_max: 256M}')}"
    assert f"    memory_high: {loc(base, btext, 'memory_high: 768M')}  (via defaults.limits.memory_high)" in out


def test_explain_lists_and_missing_paths(write):
    f = write("good.yaml", GOOD)
    text = Path(f).read_text()
    assert explain([f], "api.args[1]").splitlines()[0] == 'services.api.args[1] = "{config_path}"'
    assert f"{f}:{line_of(text, 'args: [')}" in explain([f], "api.args.0")
    assert "built-in default" in explain([f], "api.health.interval_s")
    with pytest.raises(SpecError) as info:
        explain([f], "api.limits.nope")
    (p,) = info.value.problems
    assert p.message == "'nope' is not set in any file under services.api.limits"
    assert p.expected == "one of cpu_quota, memory_high, memory_max, tasks_max"
    assert where(p) == (f, line_of(text, "limits: {memory_max: 2G"))
    with pytest.raises(SpecError, match=r"'ghost' is not set in any file under services"):
        explain([f], "ghost.port")
    with pytest.raises(SpecError, match="an index below 2"):
        explain([f], "api.args.7")
    assert parse_address("hosts.n1.address") == ("hosts", "n1", "address")
    assert parse_address("api.args[0]") == ("services", "api", "args", 0)


# ---------------------------------------------------------------- schema


def test_schema_is_valid_2020_12_and_referenced_by_the_specs():
    from jsonschema import Draft202012Validator

    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    specs = sorted((REPO / "specs").rglob("*.yaml"))
    assert REPO / "specs" / "platform.yaml" in specs
    for spec in specs:
        first = spec.read_text().splitlines()[0]
        m = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert m, f"{spec} lacks the yaml-language-server schema line"
        assert (spec.parent / m.group(1)).resolve() == schema_path().resolve()


def test_unknown_keys_list_the_allowed_ones(write):
    f = write("u.yaml", GOOD + "    colour: blue\n    \"a, b (c)\": 1\nextra: 1\n")
    text = Path(f).read_text()
    found = problems(f)
    p = at(found, "services.db.colour")
    assert p.message == "unknown key 'colour'" and where(p) == (f, line_of(text, "colour: blue"))
    assert p.expected.startswith("one of args, artifact, config, config_dir, data_dir, depends_on, description")
    assert at(found, "services.db.a, b (c)").origin.line == line_of(text, "a, b (c)")
    p = at(found, "extra")
    assert p.expected == "one of defaults, external, hosts, services, version"
    assert p.origin.line == line_of(text, "extra")
    assert len(found) == 3


@pytest.mark.parametrize(("value", "found"), [("5.0", "5.0"), ("5", "5"), ("2024-01-01", '"2024-01-01"'),
                                             ("true", "true")])
def test_version_must_be_a_string(write, value, found):
    f = write("v.yaml", GOOD.replace('version: "2.0.0"', f"version: {value}"))
    (p,) = problems(f)
    assert p.path == "services.db.version"
    assert where(p) == (f, line_of(Path(f).read_text(), f"version: {value}"))
    assert p.message.startswith("wrong type")
    assert p.expected == 'a version string in quotes, like "5.0.0"'
    assert p.found.startswith(found)


def test_spec_format_version(write):
    for value in ("2", '"1"', "1.0"):
        f = write("v.yaml", GOOD.replace("version: 1\n", f"version: {value}\n"))
        p = at(problems(f), "version")
        assert p.expected == "1" and p.origin.line == 2


@pytest.mark.parametrize("name", ["../x", "Foo", "has space", "a/b", "x" * 64, "1abc", "api\n", "-x", ""])
def test_unsafe_service_names(write, name):
    f = write("n.yaml", GOOD + f"  {json.dumps(name)}:\n    version: \"1\"\n")
    text = Path(f).read_text()
    p = at(problems(f), format_path(("services", name)))
    assert p.message == "invalid name" and p.expected == NAME_EXPECTED
    assert p.found == json.dumps(name) if len(name) < 50 else p.found.startswith(json.dumps(name)[:50])
    assert where(p) == (f, line_of(text, json.dumps(name)))


def test_unsafe_host_and_user_names(write):
    f = write("n.yaml", GOOD.replace("  n2: {", '  "N 2": {').replace("user: svc", "user: ../root"))
    found = problems(f)
    assert at(found, "hosts.N 2").message == "invalid name"
    assert at(found, "defaults.user").expected == NAME_EXPECTED


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("memory_max", "4X", "a size like 512M, 4G, 1.5G, a byte count, or infinity"),
    ("memory_max", "4 G", "a size like 512M, 4G, 1.5G, a byte count, or infinity"),
    ("memory_max", "-1", "a size like 512M, 4G, 1.5G, a byte count, or infinity"),
    ("memory_max", '"4G\\n"', "a size like 512M, 4G, 1.5G, a byte count, or infinity"),
    ("memory_max", "4.5", "a size like 512M, 4G, 1.5G, a byte count, or infinity"),
    ("cpu_quota", "200", "a percentage like 50% or 200%"),
    ("cpu_quota", "abc%", "a percentage like 50% or 200%"),
    ("cpu_quota", "'%'", "a percentage like 50% or 200%"),
    ("tasks_max", "lots", "a whole number or infinity"),
    ("tasks_max", "1.5", "a whole number or infinity"),
])
def test_malformed_sizes_and_percentages(write, field, value, expected):
    f = write("s.yaml", GOOD.replace("limits: {memory_max: 2G, cpu_quota: 150%}", f"limits: {{{field}: {value}}}"))
    text = Path(f).read_text()
    found = problems(f)
    p = at(found, f"services.api.limits.{field}")
    assert where(p) == (f, line_of(text, f"{field}: {value}"))
    assert p.origin.col == col_of(text, f"{field}: {value}")
    assert p.expected == expected
    assert p.found is not None
    assert len(found) == 1


@pytest.mark.parametrize(("value", "why"), [
    ("10q", "schema"), ("-5", "schema"), ("ten", "schema"), ("5 s", "schema"), (".inf", "semantic"),
    (".nan", "semantic"), ("1e99", "schema"), ("99999999999h", "semantic"),
])
def test_malformed_durations(write, value, why):
    f = write("d.yaml", GOOD.replace("delay_s: 5", f"delay_s: {value}"))
    text = Path(f).read_text()
    (p,) = problems(f)
    assert p.path == "defaults.restart.delay_s"  # reported once at the default, not once per service
    assert where(p) == (f, line_of(text, f"delay_s: {value}"))
    assert "duration" in p.expected and p.found is not None
    assert (p.message == "malformed delay s") == (why == "semantic")  # what the schema cannot say, checks do


def set_api(new: str) -> str:
    """GOOD with the `api` service's line for `new`'s key replaced by `new` (added when it has none)."""
    lines = spec_text(GOOD).splitlines(keepends=True)
    key = new.split(":")[0]
    start = lines.index("  api:\n")
    end = lines.index("  db:\n")
    for i in range(start, end):
        if lines[i].startswith(f"    {key}:"):
            lines[i] = f"    {new}\n"
            break
    else:
        lines.insert(start + 1, f"    {new}\n")
    return "".join(lines)


@pytest.mark.parametrize(("new", "path", "message"), [
    ("port: 8080.0", "services.api.port", "wrong type: a number"),
    ("port: 70000", "services.api.port", "70000 is greater than the maximum of 65535"),
    ("port: true", "services.api.port", "wrong type: a boolean"),
    (r'description: "two\nlines"', "services.api.description", "invalid value"),
    (r'args: ["ok", "new\nline"]', "services.api.args[1]", "invalid value"),
    ("args: [{a: 1}]", "services.api.args[0]", "wrong type: a mapping"),
    ("depends_on: [db, db]", "services.api.depends_on", "has non-unique elements"),
    ("restart: {policy: sometimes}", "services.api.restart.policy", "invalid value"),
    ("artifact: {path: art.bin}", "services.api.artifact", "`sha256` is required"),
    ("artifact: {path: art.bin, url: 'http://x/a', sha256: SHA}", "services.api.artifact", "invalid value"),
    ("artifact: {path: art.bin, sha256: ABC}", "services.api.artifact.sha256", "invalid value"),
    (r'artifact: {path: art.bin, sha256: "SHA\n"}', "services.api.artifact.sha256", "invalid value"),
    ("health: {http: 'ftp://x'}", "services.api.health.http", "invalid value"),
    ("env: {1BAD: x}", "services.api.env.1BAD", "invalid name"),
    ("secrets: {TOKEN: {from_env: A, from_file: /b}}", "services.api.secrets.TOKEN", "invalid value"),
    ("install_dir: relative/dir", "services.api.install_dir", "invalid value"),
    ("keep_releases: 0", "services.api.keep_releases", "0 is less than the minimum of 1"),
    ("limits: []", "services.api.limits", "wrong type: a list"),
    ("hosts: n1", "services.api.hosts", "wrong type: a string"),
    ("rollout: {batch_size: '0'}", "services.api.rollout.batch_size", "invalid value"),
    ("rollout: {batch_size: 0%}", "services.api.rollout.batch_size", "invalid value"),
    ("rollout: {batch_size: 101%}", "services.api.rollout.batch_size", "invalid value"),
    ("rollout: {batch_size: 0}", "services.api.rollout.batch_size", "0 is less than the minimum of 1"),
    ("user: \"svc\\n\"", "services.api.user", "invalid value"),
    ("data_dir: \"/var/x\\n\"", "services.api.data_dir", "invalid value"),
])
def test_schema_problems_name_path_line_expected_found(tmp_path, new, path, message):
    f = tmp_path / "s.yaml"
    f.write_text(set_api(new).replace("SHA", ART_SHA))
    text = f.read_text()
    found = problems(str(f), check_artifacts=False)
    p = at(found, path)
    assert message in p.message
    assert where(p) == (str(f), line_of(text, new.replace("SHA", ART_SHA)))
    assert p.expected or p.message.endswith("is required")
    assert p.found is not None or p.message.endswith("is required")
    assert len(found) == 1, [p.render() for p in found]


def test_yes_no_booleans_get_a_hint(write):
    f = write("b.yaml", GOOD.replace("policy: on-failure", "policy: no"))
    p = at(problems(f), "defaults.restart.policy")
    assert p.found.startswith("false") and "quote it" in p.found and '"no"' in p.expected


def test_host_needs_address_or_local_connector(write):
    f = write("h.yaml", GOOD.replace("n2: {address: 10.0.0.2, user: root}", "n2: {user: root}"))
    p = at(problems(f), "hosts.n2")
    assert p.expected == "an `address:` or `connector: local`"
    assert where(p) == (f, line_of(Path(f).read_text(), "n2: {user: root}"))


# ---------------------------------------------------------------- semantic checks


def test_unknown_dependency(write):
    f = write("s.yaml", GOOD.replace("depends_on: [db]", "depends_on: [db, cache]"))
    text = Path(f).read_text()
    (p,) = problems(f)
    assert p.path == "services.api.depends_on[1]" and p.message == "unknown dependency 'cache'"
    assert where(p) == (f, line_of(text, "depends_on: [db, cache]")) and p.origin.col == col_of(text, "cache")
    assert p.expected == "one of the services: api, db" and p.found == "cache"


def test_dependency_cycle_is_printed(write):
    f = write("c.yaml", GOOD.replace("    hosts: [n1, n2]\n", "    hosts: [n1, n2]\n    depends_on: [api]\n"))
    text = Path(f).read_text()
    (p,) = problems(f)
    assert p.message == "dependency cycle: api → db → api"
    assert p.path == "services.api.depends_on" and where(p) == (f, line_of(text, "depends_on: [db]"))
    assert p.expected == "dependencies without cycles"


def test_longer_cycle_and_self_dependency(write):
    f = write("c.yaml", """
        version: 1
        hosts: {n1: {address: h}}
        services:
          a: {version: "1", artifact: {path: art.bin, sha256: SHA}, depends_on: [b]}
          b: {version: "1", artifact: {path: art.bin, sha256: SHA}, depends_on: [c]}
          c: {version: "1", artifact: {path: art.bin, sha256: SHA}, depends_on: [a]}
          d: {version: "1", artifact: {path: art.bin, sha256: SHA}, depends_on: [d]}
    """)
    found = problems(f)
    assert [p.message for p in found] == ["dependency cycle: a → b → c → a", "a service cannot depend on itself"]
    assert found[1].path == "services.d.depends_on[0]" and found[1].origin.line == 7


def test_find_cycle_handles_long_chains():
    chain = {f"s{i}": [f"s{i + 1}"] for i in range(5000)}
    chain["s5000"] = []
    assert find_cycle(chain) is None
    chain["s5000"] = ["s4998"]
    assert find_cycle(chain) == ["s4998", "s4999", "s5000", "s4998"]
    assert find_cycle({"a": ["a"]}) is None  # a self-dependency is reported on its own


def test_unknown_host(write):
    f = write("h.yaml", GOOD.replace("hosts: [n1, n2]", "hosts: [n1, n3]"))
    (p,) = problems(f)
    assert p.path == "services.db.hosts[1]" and p.message == "unknown host 'n3'"
    assert where(p) == (f, line_of(Path(f).read_text(), "n3")) and p.expected == "one of n1, n2" and p.found == "n3"


def test_unknown_host_in_defaults_is_reported_once(write):
    f = write("h.yaml", GOOD.replace("  hosts: [n1]\n", "  hosts: [n9]\n"))
    (p,) = problems(f)
    assert p.path == "defaults.hosts[0]" and where(p) == (f, line_of(Path(f).read_text(), "hosts: [n9]"))


def test_service_without_any_host(write):
    f = write("h.yaml", GOOD.replace("hosts: [n1, n2]", "hosts: []"))
    p = at(problems(f), "services.db.hosts")
    assert p.message == "service runs on no host" and p.expected == "at least one host name"


def test_port_clash_on_a_host(write):
    f = write("p.yaml", GOOD.replace("port: 8081", "port: 8080"))
    text = Path(f).read_text()
    (p,) = problems(f)
    assert p.path == "services.db.port"
    assert p.message == "port 8080 on host 'n1' is already used by service 'api'"
    assert where(p) == (f, line_of(text, "    port: 8080", 2))
    assert p.expected == "one service per port on a host" and p.found == "8080"
    # the same port on different hosts is fine
    ok = write("p2.yaml", GOOD.replace("port: 8081", "port: 8080").replace("hosts: [n1, n2]", "hosts: [n2]"))
    load_spec([ok])


def test_missing_artifact_and_checksum_mismatch(write):
    other = "0" * 64
    f = write("a.yaml", f"""
        version: 1
        hosts: {{n1: {{address: h}}}}
        services:
          api:
            version: "1"
            artifact: {{path: missing.bin, sha256: SHA}}
          db:
            version: "1"
            artifact:
              path: art.bin
              sha256: "{other}"
    """)
    text = Path(f).read_text()
    found = problems(f)
    p = at(found, "services.api.artifact.path")
    assert p.message == "artifact file not found" and where(p) == (f, line_of(text, "missing.bin"))
    assert p.found == str(Path(f).parent / "missing.bin")  # relative to the spec file
    assert p.expected == "a file (paths are relative to the spec file)"
    p = at(found, "services.db.artifact.sha256")
    assert p.message == f"checksum mismatch for {Path(f).parent / 'art.bin'}"
    assert where(p) == (f, line_of(text, other))
    assert p.expected == other and p.found == ART_SHA
    assert len(found) == 2
    assert len(load_spec([f], check_artifacts=False).services) == 2


@pytest.mark.parametrize("path", ["~nosuchuser-recon/x", "a" * 5000, "dir"])
def test_odd_artifact_paths(write, tmp_path, path):
    (tmp_path / "dir").mkdir()
    f = write("a.yaml", GOOD.replace("path: art.bin", f"path: {path}", 1))
    p = at(problems(f), "services.api.artifact.path")
    assert p.message in ("artifact file not found", "artifact path cannot be used")


def test_memory_high_above_max_placeholders_and_config(write):
    f = write("m.yaml", GOOD.replace("memory_max: 2G", "memory_max: 512M").replace(
        "workers: 4}", "workers: 4, home: '{home}', none: null, big: 99999999999999999999}"))
    text = Path(f).read_text()
    found = problems(f)
    p = at(found, "services.api.limits.memory_high")
    assert p.message == "memory_high is above memory_max" and p.origin.line == line_of(text, "memory_high: 768M")
    assert p.expected == "at most memory_max (512M)" and p.found == "768M"
    p = at(found, "services.api.config.server.home")
    assert p.message == "unknown placeholder {home}" and p.found == "{home}"
    assert at(found, "services.api.config.server.none").message == "null cannot be written to the TOML config"
    assert at(found, "services.api.config.server.big").expected == "a 64-bit signed integer"
    assert len(found) == 4


def test_all_problems_are_reported_in_one_run(write):
    f = write("many.yaml", """
        version: 1
        hosts:
          n1: {address: 10.0.0.1}
        services:
          api:
            version: 5.0
            artifact: {path: missing.bin, sha256: SHA}
            hosts: [n1, n7]
            port: 8080
            depends_on: [db, ghost]
            limits: {memory_max: 4X, cpu_quota: 200}
            restart: {delay_s: 10q}
            colour: blue
          db:
            version: "1"
            artifact: {path: art.bin, sha256: SHA}
            port: 8080
            depends_on: [api]
          ../etc:
            version: "1"
    """)
    text = Path(f).read_text()
    found = problems(f)
    want = [
        ("services.api.version", line_of(text, "version: 5.0")),
        ("services.api.artifact.path", line_of(text, "missing.bin")),
        ("services.api.hosts[1]", line_of(text, "n7")),
        ("services.api.depends_on", line_of(text, "ghost")),
        ("services.api.depends_on[1]", line_of(text, "ghost")),
        ("services.api.limits.memory_max", line_of(text, "4X")),
        ("services.api.limits.cpu_quota", line_of(text, "cpu_quota: 200")),
        ("services.api.restart.delay_s", line_of(text, "10q")),
        ("services.api.colour", line_of(text, "colour")),
        ("services.db.port", line_of(text, "    port: 8080", 2)),
        ("services.../etc", line_of(text, "../etc")),
    ]
    assert [(p.path, p.origin.file, p.origin.line) for p in found] == [(path, f, line) for path, line in want]
    assert all(p.expected for p in found), [p.render() for p in found]
    assert found[3].message == "dependency cycle: api → db → api"
    rendered = str(SpecError(found))
    assert rendered.endswith("11 problems found")
    assert f"{f}:{line_of(text, 'colour')}:5: services.api.colour: unknown key 'colour'" in rendered


def test_problems_come_in_the_order_of_the_files_given(write):
    base = write("z-base.yaml", GOOD.replace("port: 8081", "port: 99999"))
    over = write("a-over.yaml", "services:\n  api:\n    keep_releases: 0\n")
    assert [p.origin.file for p in problems(base, over)] == [base, over]
    assert [p.origin.file for p in problems(over, base)] == [over, base]


def test_problems_are_deterministic(write):
    f = write("many.yaml", GOOD.replace("depends_on: [db]", "depends_on: [db, x, y]").replace(
        "port: 8081", "port: 8080") + "  Bad: {}\n  worse: []\nzzz: 1\n")
    runs = [[p.render() for p in problems(f)] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) >= 5


def test_problem_render_and_dict():
    p = Problem("bad", "services.a.port", Origin("s.yaml", 3, 5), expected="x", found="y")
    assert p.render() == "s.yaml:3:5: services.a.port: bad (expected x; found y)"
    assert p.as_dict() == {"file": "s.yaml", "line": 3, "column": 5, "path": "services.a.port", "message": "bad",
                           "expected": "x", "found": "y"}


# ---------------------------------------------------------------- units


def test_units():
    assert parse_size("4G") == 4 * 1024**3 and parse_size("1.5G") == 3 * 1024**3 // 2
    assert parse_size("infinity") == "infinity" and parse_size(1024) == 1024
    assert parse_duration("500ms") == 0.5 and parse_duration("5min") == 300 and parse_duration(30) == 30.0
    assert parse_percent("50%") == 50.0 and parse_count("512") == 512 and parse_count("infinity") == "infinity"
    for bad in ("4G\n", "4g", "", "9" * 400 + "G", "99999999999T", True, -1, 2**70, 1.5, None, [1]):
        with pytest.raises((ValueError, TypeError)):
            parse_size(bad)  # type: ignore[arg-type]
    for bad in ("30s\n", float("nan"), float("inf"), -1, "1" * 400, True, 10**400, "1e3"):
        with pytest.raises((ValueError, TypeError)):
            parse_duration(bad)  # type: ignore[arg-type]
    for bad in ("50", "50%\n", 50, "%", "٣%"):
        with pytest.raises(ValueError):
            parse_percent(bad)  # type: ignore[arg-type]
    for bad in ("٣", "1.5", -3, True, "5\n"):
        with pytest.raises(ValueError):
            parse_count(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the reference spec


def test_reference_platform_spec(platform_artifacts):
    files = [str(REPO / "specs" / "platform.yaml"), str(REPO / "specs" / "overrides" / "local.yaml")]
    spec = load_spec(files)
    assert len(spec.services) == 9 and list(spec.hosts) == ["node1"]
    assert sorted(s.port for s in spec.services.values()) == list(range(8080, 8089))
    orch = spec.services["orchestrator"]
    assert orch.limits.memory_max == 256 * 1024**2 and orch.limits.cpu_quota == 50.0
    assert spec.hosts["node1"].address == "127.0.20.1"


@pytest.fixture(scope="session")
def platform_artifacts() -> None:
    """The reference spec pins artifacts built by reconciler.standin.build; build them when missing."""
    import subprocess
    import sys

    text = (REPO / "specs" / "platform.yaml").read_text()
    names = re.findall(r"path: \.\./artifacts/(\S+?),", text)
    if not all((REPO / "artifacts" / n).is_file() for n in names):
        subprocess.run([sys.executable, "-m", "reconciler.standin.build", "--out", "artifacts"], cwd=REPO,
                       check=True, capture_output=True)


@pytest.mark.parametrize("text", [
    "a: [" * 3000, "a: &a [*a]\n", "a: \x00\n", "x: 2001-13-45\n", "a: {b: 1\n", "v: 1\n---\nv: 2\n",
    "a: " + "[" * 150 + "]" * 150 + "\n", "ok: 1\n",
])
def test_pure_python_yaml_loader_also_gives_only_spec_errors(monkeypatch, text):
    """Without libyaml recon falls back to PyYAML's pure-Python loader: same guarantees."""
    import yaml

    from reconciler.spec import loader

    monkeypatch.setattr(loader, "_Loader", yaml.SafeLoader)
    monkeypatch.setattr(loader, "_C_LOADER", False)
    try:
        layer = parse_text(text, "py.yaml")
    except SpecError as exc:
        assert all(p.origin and p.origin.file == "py.yaml" and p.origin.line >= 1 for p in exc.problems)
    else:
        assert layer.data == {"ok": 1}


def test_a_later_layers_null_removes_a_key(write):
    """JSON Merge Patch semantics: an override turns an env secret into a file secret, or drops a limit."""
    base = write("base.yaml", GOOD)
    over = write("over.yaml", """
        version: 1
        defaults:
          limits: {memory_high: null}
        services:
          api:
            limits: {memory_max: null}
    """)
    spec = load_spec([base, over])
    assert spec.services["api"].limits.memory_max == 1024**3     # its own 2G is gone: the default applies
    assert spec.services["api"].limits.memory_high is None
    assert spec.services["db"].limits.memory_high is None
    # a null in the first file is no removal: the schema reports it
    only = write("only.yaml", GOOD.replace("port: 8080", "port: null", 1))
    assert any("port" in p.path for p in problems(only))
