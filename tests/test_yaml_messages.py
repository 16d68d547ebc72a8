"""Malformed and oversized YAML: the error names the line the problem is on (issue 8 item 7) and the
real reason a document is too large (issue 7 section 5). Pure: no host."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reconciler.errors import SpecError
from reconciler.spec import loader
from reconciler.spec.loader import MAX_NODES, parse_text

REPO = Path(__file__).resolve().parents[1]
HEAD28 = "".join((REPO / "specs" / "platform.yaml").read_text().splitlines(keepends=True)[:28])


def _problem(text: str, file: str = "bad.yaml") -> tuple[str, int, int]:
    with pytest.raises(SpecError) as info:
        parse_text(text, file)
    (p,) = info.value.problems
    assert p.origin is not None
    return p.message, p.origin.line, p.origin.col


@pytest.fixture(params=["libyaml", "pure"])
def any_loader(request, monkeypatch):
    """Both PyYAML loaders (libyaml's and the pure-Python fallback) give the same places."""
    if request.param == "pure":
        monkeypatch.setattr(loader, "_Loader", yaml.SafeLoader)
        monkeypatch.setattr(loader, "_C_LOADER", False)


def test_unclosed_flow_mapping_on_the_last_line_points_at_that_line_not_past_the_file(any_loader):
    text = HEAD28 + "  limits: {memory_max: 1G\n"
    assert text.count("\n") == 29
    message, line, col = _problem(text)
    assert (line, col) == (29, 26)  # just after `1G`, where the `}` is missing; the file has 29 lines
    assert "expected ',' or '}'" in message and "at the end of the file" in message
    assert "while parsing a flow mapping that starts at 29:11" in message


def test_problem_mark_first_then_the_context_mark_when_it_differs(any_loader):
    message, line, col = _problem(HEAD28 + "  limits: {memory_max: 1G memory_high: 768M}\n")
    assert (line, col) == (29, 38)
    assert message.endswith("; while parsing a flow mapping that starts at 29:11")
    assert "at the end of the file" not in message


def test_context_on_another_line(any_loader):
    message, line, col = _problem("a: b\n- c\n")
    assert (line, col) == (2, 1)
    assert "while parsing a block mapping that starts at 1:1" in message


def test_no_context_mark_no_context_text(any_loader):
    message, line, col = _problem("a: 1\n  b: 2\n")
    assert (line, col) == (2, 4) and "while" not in message and "starts at" not in message


def test_trailing_blank_lines_do_not_push_the_line_past_the_content(any_loader):
    message, line, col = _problem("a: 1\nb: [1, 2\n\n\n\n")
    assert (line, col) == (2, 9) and "flow sequence that starts at 2:4" in message


def test_cli_prints_the_problem_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD28 + "  limits: {memory_max: 1G\n")
    res = subprocess.run([sys.executable, "-m", "reconciler", "validate", "-f", str(bad)], capture_output=True,
                         text=True, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 1
    assert f"{bad}:29:26: malformed YAML:" in res.stderr and ":30:" not in res.stderr


# ---------------------------------------------------------------- YAML 1.1's extra line breaks


@pytest.mark.parametrize(("char", "name", "escape"), [("\x85", "U+0085 (NEL)", "\\N"),
                                                      ("\u2028", "U+2028 (LINE SEPARATOR)", "\\L"),
                                                      ("\u2029", "U+2029 (PARAGRAPH SEPARATOR)", "\\P")],
                         ids=["NEL", "LS", "PS"])
@pytest.mark.parametrize("text", [
    "version: 1\nservices:\n  a:\n    args: ['x{c}y']\n",      # inside quotes: a NEL was read as a space
    "version: 1\n# a note{c}hosts: {{}}\n",                     # in a comment: the rest was read as YAML
    "version: 1\ndescription: x{c}\n",
], ids=["in-quotes", "in-a-comment", "in-a-plain-scalar"])
def test_a_raw_yaml11_line_break_is_refused_naming_the_character(any_loader, char, name, escape, text):
    text = text.format(c=char)
    message, line, col = _problem(text)
    row = next(i for i, t in enumerate(text.split("\n"), 1) if char in t)
    assert (line, col) == (row, text.split("\n")[row - 1].index(char) + 1)
    assert message == f"unreadable text: a raw {name} character, which YAML reads as a line break"
    with pytest.raises(SpecError) as info:
        parse_text(text, "bad.yaml")
    assert escape in info.value.problems[0].expected


def test_a_raw_nel_in_json_is_refused_too_and_escaped_ones_are_read():
    message, line, col = _problem('{"version": 1,\n "x": ["a\x85b"]}', "bad.json")
    assert (line, col) == (2, 10) and "U+0085 (NEL)" in message and "JSON" in message
    layer = parse_text('{"x": ["a\\u0085b", "\\u2028"]}', "ok.json")
    assert layer.data == {"x": ["a\x85b", "\u2028"]}
    layer = parse_text('x: ["a\\Nb", "\\x85", "\\L\\P"]\n', "ok.yaml")
    assert layer.data == {"x": ["a\x85b", "\x85", "\u2028\u2029"]}


# ---------------------------------------------------------------- too large


def test_a_plain_long_list_is_too_large_as_written_not_through_aliases():
    text = "version: 1\nservices:\n  a:\n    args:\n" + "    - x\n" * 300_000
    message, line, _ = _problem(text)
    assert "alias" not in message
    assert message == f"the document is too large: more than {MAX_NODES} values (the {MAX_NODES + 1}st is here)"
    assert 99_990 < line < 100_010  # where the limit was crossed


def test_an_alias_bomb_is_still_reported_as_alias_expansion(any_loader):
    rows = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    message, line, _ = _problem("\n".join(rows) + "\n")
    assert message == "the document is too large once aliases are expanded" and line == 1


def test_just_under_the_limit_is_not_too_large():
    layer = parse_text("a:\n" + "  - x\n" * (MAX_NODES - 3), "ok.yaml")
    assert len(layer.data["a"]) == MAX_NODES - 3
