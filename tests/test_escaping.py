"""What recon writes for systemd, pinned byte for byte: EnvironmentFile= lines for secrets, unit lines
(ExecStart=, Environment=, Description=, paths), the refusals, and how the plan reads units back. No host:
the rules were measured on systemd 252 (docs/design.md "Secrets and unit escaping"); the host tests in
test_secrets_hosts.py check delivery on a real one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reconciler.desired import _env_quote, _exec_quote, desired_state, parse_unit, render_secrets
from reconciler.errors import ReconError, SpecError
from reconciler.pipeline import secret_lookup
from reconciler.spec import load_spec
from reconciler.spec.loader import Layer
from reconciler.spec.merge import merge_layers
from reconciler.spec.model import Secret, build_spec

REPO = Path(__file__).resolve().parents[1]
VALUE = "sekrit-Yh7-do-not-print"
ENV_VALUE_MAX = 131071   # measured: one NAME=value plus its NUL may be 131072 bytes (MAX_ARG_STRLEN), no more


def env_file_line(name: str, value: str) -> str:
    """The env file recon renders for one secret `name` holding `value`."""
    doc = _doc(secrets={name: {"from_env": name}})
    spec = build_spec(merge_layers([Layer("spec.yaml", doc, {})]))
    return render_secrets(spec.services["api"], lambda _n, _s: value)


# --- EnvironmentFile= lines ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "line"), [
    # the values issue 7 saw altered, and what is written now
    ("tok\rINJECTED=yes-injected", 'S="tok\rINJECTED=yes-injected"\n'),
    ("p\\ss", 'S="p\\\\ss"\n'),
    ('"quoted"', 'S="\\"quoted\\""\n'),
    ("'x", "S=\"'x\"\n"),
    ("a\nb", 'S="a\nb"\n'),
    # the four escapes systemd honours in double quotes, and what it keeps as it is
    ("$HOME ${X} `id`", 'S="\\$HOME \\${X} \\`id\\`"\n'),
    ("  lead and trail\t ", 'S="  lead and trail\t "\n'),
    ("#not ;a comment %H %%", 'S="#not ;a comment %H %%"\n'),
    ("end\\", 'S="end\\\\"\n'),
    ("bs-newline\\\nx", 'S="bs-newline\\\\\nx"\n'),
    ("", 'S=""\n'),
    ("é€\u2028\x1b", 'S="é€\u2028\x1b"\n'),
])
def test_env_file_line_bytes(value: str, line: str) -> None:
    assert env_file_line("S", value) == line


def _svc(**secrets: str) -> Any:
    doc = _doc(secrets={k: {"from_env": k} for k in secrets})
    return doc


def _doc(**fields: Any) -> dict[str, Any]:
    return {"version": 1, "hosts": {"n1": {"address": "127.0.0.1"}},
            "services": {"api": {"version": "1.0.0", "artifact": {"path": "api.bin", "sha256": "0" * 64},
                                 "port": 8080, **fields}}}


def _spec(tmp_path: Path, doc: dict[str, Any]) -> Any:
    """`doc` written as YAML and loaded. Non-ASCII is written as escapes: PyYAML's writer puts a raw U+0085
    in single quotes, which YAML reads back as a space (the loader refuses raw U+0085, U+2028, U+2029)."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=False, sort_keys=False))
    return load_spec([path], check_artifacts=False)


def test_render_secrets_sorted_lines(tmp_path: Path) -> None:
    spec = _spec(tmp_path, _svc(B_TOKEN="", A_TOKEN=""))
    values = {"A_TOKEN": 'x"y', "B_TOKEN": "line1\nline2"}
    text = render_secrets(spec.services["api"], lambda name, _s: values[name])
    assert text == 'A_TOKEN="x\\"y"\nB_TOKEN="line1\nline2"\n'


@pytest.mark.parametrize(("value", "why"), [
    ("a\0b", "NUL character"),
    ("bad-\udcff-byte", "not valid UTF-8"),       # an environment variable holding the byte 0xff
    ("x" * (ENV_VALUE_MAX - len("API_TOKEN=") + 1), "bytes long"),
])
def test_values_systemd_cannot_carry_are_refused_naming_the_secret(tmp_path: Path, value: str, why: str) -> None:
    spec = _spec(tmp_path, _svc(API_TOKEN=""))
    with pytest.raises(ReconError) as err:
        desired_state(spec, lambda _n, _s: VALUE + value)
    msg = str(err.value)
    assert "services.api.secrets.API_TOKEN" in msg and "env API_TOKEN" in msg and why in msg
    assert VALUE not in msg and "bad-" not in msg and "a\0b" not in msg


def test_longest_value_the_kernel_takes_is_accepted(tmp_path: Path) -> None:
    spec = _spec(tmp_path, _svc(API_TOKEN=""))
    longest = "x" * (ENV_VALUE_MAX - len("API_TOKEN="))      # measured: NAME=value plus its NUL = 131072 bytes
    d = desired_state(spec, lambda _n, _s: longest)["n1"]["api"]
    assert d.secrets_text == f'API_TOKEN="{longest}"\n'


def test_from_file_keeps_every_byte_but_one_final_newline(tmp_path: Path) -> None:
    f = tmp_path / "tok"
    for data, want in [(b"abc\n", "abc"), (b"abc\n\n", "abc\n"), (b"abc", "abc"), (b" a\r\n", " a\r"),
                       (b"\n", ""), ("é\u2028".encode(), "é\u2028")]:
        f.write_bytes(data)
        assert secret_lookup("T", Secret("T", from_file=str(f))) == want
    f.write_bytes(b"tok\xff\n")
    with pytest.raises(ReconError, match=r"secret T: .* is not valid UTF-8") as err:
        secret_lookup("T", Secret("T", from_file=str(f)))
    assert "tok" not in str(err.value).replace(str(f), "")


# --- a reference reader of systemd's double-quoted env-file values (systemd 252 env-file.c), as a cross-check
def _read_env_file(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(text):
        eq = text.index("=", i)
        key, i = text[i:eq], eq + 1
        assert text[i] == '"'
        i += 1
        val: list[str] = []
        while text[i] != '"':
            if text[i] == "\\":
                nxt = text[i + 1]
                if nxt in '"\\`$':
                    val.append(nxt)
                elif nxt != "\n":             # backslash-newline: a continuation, both dropped
                    val.append("\\" + nxt)
                i += 2
            else:
                val.append(text[i])
                i += 1
        out[key] = "".join(val)
        i += 1
        assert text[i] == "\n"
        i += 1
    return out


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True),
                       st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=40)
                       | st.text(alphabet='\\"$`\n\r\t #;%\' ab', max_size=20), max_size=5))
def test_env_file_round_trips_through_systemds_rules(values: dict[str, str]) -> None:
    text = "".join(env_file_line(k, v) for k, v in sorted(values.items()))
    assert _read_env_file(text) == values


# --- unit lines -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("arg", "word"), [
    ("--config", "--config"),                               # plain words stay as they were
    ("/etc/provisioning/api.toml", "/etc/provisioning/api.toml"),
    ("%H", "%%H"),
    ("100%", "100%%"),
    ("$HOME", '"$$HOME"'),
    ("a b", '"a b"'),
    ("", '""'),
    (";", '";"'),
    ("q\"uo'te", '"q\\"uo\'te"'),
    ("back\\slash", '"back\\\\slash"'),
    ("ls\u2028x", '"ls\\u2028x"'),
    ("nel\x85x", '"nel\\u0085x"'),
    ("tab\tesc\x1b", '"tab\\tesc\\x1b"'),
    ("é", '"é"'),
    ("\U0001f600", '"\U0001f600"'),
])
def test_exec_args_are_quoted_and_escaped(arg: str, word: str) -> None:
    assert _exec_quote(arg) == word


@pytest.mark.parametrize(("key", "value", "line"), [
    ("MODE", "prod", '"MODE=prod"'),
    ("P", "%H $HOME", '"P=%%H $HOME"'),                  # Environment= expands specifiers, not variables
    ("Q", 'a"b\\c', '"Q=a\\"b\\\\c"'),
    ("S", "x\u2029y\x0cz", '"S=x\\u2029y\\x0cz"'),
    ("E", "", '"E="'),
])
def test_environment_lines(key: str, value: str, line: str) -> None:
    assert _env_quote(key, value) == line


def test_description_and_paths_have_specifiers_doubled(tmp_path: Path) -> None:
    doc = _doc(description="100% on %H", data_dir="/srv/d%n", config_dir="/etc/p%i",
               secrets={"T": {"from_env": "T"}}, args=["--name", "%H"])
    unit = desired_state(_spec(tmp_path, doc), lambda _n, _s: "v")["n1"]["api"].unit_text
    lines = unit.splitlines()
    assert "Description=Provisioning api (100%% on %%H)" in lines
    assert "ReadWritePaths=-/srv/d%%n" in lines
    assert "EnvironmentFile=/etc/p%%i/api.env" in lines
    assert any(line.startswith("ExecStart=") and line.endswith(" --name %%H") for line in lines)


@pytest.mark.parametrize("bad", ["\u2028", "\u2029", "\x85", "\r", "\n", "\x0b", "\x1c"])
def test_a_line_break_in_a_description_is_refused_with_file_and_line(tmp_path: Path, bad: str) -> None:
    doc = _doc(description=f"x{bad}ExecStartPre=/bin/touch /tmp/pwned")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=False, sort_keys=False))
    with pytest.raises(SpecError) as err:
        load_spec([path], check_artifacts=False)
    text = str(err.value)
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "description" in t)
    assert f"{path}:{line}" in text and "services.api.description" in text


@pytest.mark.parametrize("bad", ["\x01", "\x7f", "\x1b", "\0"])
def test_control_characters_in_paths_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SpecError, match=r"services\.api\.data_dir"):
        _spec(tmp_path, _doc(data_dir=f"/srv/a{bad}b"))


def test_plan_reads_unit_lines_as_systemd_does() -> None:
    # U+2028 & co. end a line for str.splitlines, not for systemd: one line, one key
    unit = "[Unit]\nDescription=x\u2028ExecStartPre=/bin/evil\x85y\n[Service]\nExecStart=/bin/true\n"
    assert parse_unit(unit) == {"Description": ["x\u2028ExecStartPre=/bin/evil\x85y"], "ExecStart": ["/bin/true"]}
    # CR (alone or before LF) and NUL do end a line for systemd (measured: a CR in Description= made
    # the rest an After= of its own)
    assert parse_unit("Description=a\rAfter=b.service\r\nWants=c\0Type=simple") == {
        "Description": ["a"], "After": ["b.service"], "Wants": ["c"], "Type": ["simple"]}
    # a trailing backslash continues the line (read as a space); comments inside are skipped; an escaped
    # backslash, an empty line or a comment ending in a backslash do not continue it
    assert parse_unit("Description=a \\\n# c\nb\nAfter=x\\\\\nWants=y \\\n\nType=z\n# c \\\nUser=u") == {
        "Description": ["a  b"], "After": ["x\\\\"], "Wants": ["y"], "Type": ["z"], "User": ["u"]}


_ARG = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0\n\r"), max_size=12)


def test_nel_in_args_and_env_reaches_the_unit_escaped(tmp_path: Path) -> None:
    # found by hypothesis as args ['\x85\x85']: valid for the checks, but the spec file held it raw, which
    # YAML read as a newline ("not on one line"). Written as escapes it is valid and one unit line each.
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_doc(args=["\x85\x85", "a\x85b"], env={"N": "\x85"}), sort_keys=False))
    assert '"\\N\\N"' in path.read_text()
    unit = desired_state(load_spec([path], check_artifacts=False), None)["n1"]["api"].unit_text
    parsed = parse_unit(unit)
    assert parsed["ExecStart"][0].endswith(' "\\u0085\\u0085" "a\\u0085b"')
    assert parsed["Environment"] == ['"N=\\u0085"']
    path.write_text(yaml.safe_dump(_doc(args=["\x85\x85"]), allow_unicode=True, sort_keys=False))
    with pytest.raises(SpecError, match=r"spec\.yaml:\d+:\d+: unreadable text: a raw U\+0085 \(NEL\) character"):
        load_spec([path], check_artifacts=False)


@settings(max_examples=200, deadline=None)
@example(description="", args=["\x85\x85"], env={})
@example(description="", args=["\u2028"], env={"A": "\u2029\x85"})
@given(description=st.text(st.characters(blacklist_categories=["Cs", "Cc"],
                                          blacklist_characters="\x85\u2028\u2029"), max_size=30),
       args=st.lists(_ARG, max_size=4), env=st.dictionaries(st.from_regex(r"[A-Z]{1,4}", fullmatch=True), _ARG,
                                                             max_size=3))
def test_any_valid_spec_renders_one_unit_line_per_field(tmp_path_factory: Any, description: str, args: list[str],
                                                        env: dict[str, str]) -> None:
    """Whatever a valid spec says, the unit has exactly the lines recon meant (no value becomes a line of
    its own, for systemd or for the plan), and every character outside the printable ASCII in ExecStart=
    and Environment= is escaped."""
    doc = _doc(description=description, args=args, env=env)
    tmp = tmp_path_factory.mktemp("u")
    unit = desired_state(_spec(tmp, doc), None)["n1"]["api"].unit_text
    parsed = parse_unit(unit)
    assert parsed["Description"] == [("Provisioning api" + (f" ({description})" if description else "")
                                      ).replace("%", "%%").strip(" \t")]
    assert len(parsed["ExecStart"]) == 1 and len(parsed.get("Environment", [])) == len(env)
    assert set(parsed) == {"Description", "After", "Wants", "StartLimitIntervalSec", "Type", "User", "Group",
                           "ExecStart", "Restart", "RestartSec", "NoNewPrivileges", "PrivateTmp", "ProtectSystem",
                           "ProtectHome", "ReadWritePaths", "WantedBy"} | ({"Environment"} if env else set())
    for line in unit.split("\n"):
        assert line == line.strip(" \t") or line.startswith("Description=")
        if line.startswith(("ExecStart=", "Environment=")):
            assert all(" " <= ch <= "~" or ch.isprintable() for ch in line)


# --- the CLI: refused before any host is contacted -------------------------------------------------------------
def test_plan_refuses_a_nul_secret_before_touching_any_host(tmp_path: Path) -> None:
    art = tmp_path / "api.bin"
    art.write_bytes(b"#!/bin/sh\n")
    doc = _doc(secrets={"API_TOKEN": {"from_file": str(tmp_path / "tok")}})
    doc["services"]["api"]["artifact"] = {"path": str(art), "sha256": hashlib.sha256(art.read_bytes()).hexdigest()}
    doc["hosts"]["n1"] = {"address": "127.0.0.1", "port": 1}      # nothing listens there: any contact fails
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "tok").write_bytes(VALUE.encode() + b"\0tail\n")
    env = {**os.environ, "NO_COLOR": "1"}
    for cmd in (["plan"], ["apply", "--auto-approve"]):
        r = subprocess.run([sys.executable, "-m", "reconciler", *cmd, "-f", "spec.yaml", "--state", "st"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "services.api.secrets.API_TOKEN" in r.stderr and "NUL" in r.stderr
        assert VALUE not in r.stdout + r.stderr
        assert "connect" not in (r.stdout + r.stderr).lower()
        state = tmp_path / "st" / "recon.state.json"        # only the lineage (the fingerprint salt) is kept
        assert not state.exists() or not json.loads(state.read_text()).get("hosts")
        assert not (tmp_path / "st" / "history.jsonl").exists()
