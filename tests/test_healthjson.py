"""`health.expect_json`, pure: the Python rule, the host's awk matcher agreeing with it (on hand-picked and
generated bodies), the observation's body parsing, the gate's check line, and the spec's checks."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import healthjson
from reconciler.observe import Health, _checked_health, health_bodies

AWK = shutil.which("awk")


def awk(expect: dict[str, Any], body: str | bytes) -> str | None:
    assert AWK, "awk is needed (mawk is Essential on Debian)"
    data = body.encode() if isinstance(body, str) else body
    res = subprocess.run(["sh", "-c", healthjson.awk_command(expect, shlex.quote)], input=data, capture_output=True,
                         timeout=10)
    assert res.returncode == 0 and not res.stderr, res
    return res.stdout.decode().strip() or None


DB = {"database": "connected"}
CASES: list[tuple[dict[str, Any], str, str | None]] = [
    (DB, '{"status": "healthy", "database": "connected", "active_workflows": 5}', None),
    (DB, '{"database": "disconnected"}', 'database: expected "connected", found "disconnected"'),
    (DB, '{"database": "conn\\u0065cted"}', None),
    (DB, '{"other": 1}', 'database: expected "connected", found no such field'),
    (DB, '{"a": {"database": "connected"}}', 'database: expected "connected", found no such field'),
    (DB, '{"database": {"state": "connected"}}', 'database: expected "connected", found an object'),
    (DB, '{"database": ["connected"]}', 'database: expected "connected", found an array'),
    (DB, "", "the health answer is not JSON"),
    (DB, "OK", "the health answer is not JSON"),
    (DB, '{"database": "connected"} trailing', "the health answer is not JSON"),
    (DB, '{"database": "connected",}', "the health answer is not JSON"),
    (DB, '{"database": "conn\x01ected"}', "the health answer is not JSON"),
    (DB, '["connected"]', "the health answer is not a JSON object"),
    (DB, '"connected"', "the health answer is not a JSON object"),
    (DB, '{"database": "connected", "database": "disconnected"}',
     'database: expected "connected", found "disconnected"'),          # the last one wins, as in Python
    ({"n": 1}, '{"n": 1.0}', None),
    ({"n": 1}, '{"n": 10e-1}', None),
    ({"n": 1}, '{"n": true}', "n: expected 1, found true"),
    ({"n": True}, '{"n": 1}', "n: expected true, found 1"),
    ({"n": None}, '{"n": null}', None),
    ({"n": 0}, '{"n": -0.0}', None),
    ({"n": 0.1}, '{"n": 0.10}', None),
    ({"n": 12345678901234567890}, '{"n": 12345678901234567891}',
     "n: expected 12345678901234567890, found 12345678901234567891"),   # exact, not float
    ({"n": 1}, '{"n": NaN}', "the health answer is not JSON"),
    ({"n": 1}, '{"n": 01}', "the health answer is not JSON"),
    ({"k\u00e9": "\U0001f600"}, '{"k\\u00e9": "\\ud83d\\ude00"}', None),
    ({"a": "x"}, '{"b": [1, {"c": "}]"}], "a": "x"}\n', None),
    # a lone surrogate escape is valid JSON; the detail keeps it escaped, so it can be printed (it crashed output)
    (DB, '{"database": "\\ud800"}', 'database: expected "connected", found "\\ud800"'),
]


@pytest.mark.parametrize(("expect", "body", "why"), CASES)
def test_python_rule_and_awk_matcher(expect: dict[str, Any], body: str, why: str | None) -> None:
    assert healthjson.mismatch(expect, body) == why
    assert awk(expect, body) == why


# the spec refuses NUL (a shell argument) and lone surrogates (no UTF-8 holds them); a body may carry any of them
text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=False, allow_infinity=False), text)
body_text = st.text(st.characters(blacklist_characters="\x00"), max_size=8)
body_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                         st.floats(allow_nan=False, allow_infinity=False), body_text)
LONE = re.compile("[\ud800-\udfff]")
docs = st.recursive(body_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                    max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(st.sampled_from(["a", "b", "é", "k y"]), docs, max_size=4),
       expect=st.dictionaries(st.sampled_from(["a", "b", "é", "k y"]), scalars, min_size=1, max_size=2),
       ascii_only=st.booleans(), mangle=st.sampled_from(["", "x", ",", "}", " "]))
def test_awk_agrees_with_python(doc: dict[str, Any], expect: dict[str, Any], ascii_only: bool, mangle: str) -> None:
    body = json.dumps(doc, ensure_ascii=ascii_only) + mangle
    body = LONE.sub(lambda m: f"\\u{ord(m.group()):04x}", body)   # a UTF-8 body can only escape them
    py, sh = healthjson.mismatch(expect, body), awk(expect, body)
    assert (py is None) == (sh is None), (body, expect, py, sh)
    if py is not None and "found" not in py:
        assert py == sh
    if py is not None:
        py.encode()   # printable: a lone surrogate is shown escaped


@given(expect=st.dictionaries(text, scalars, min_size=1, max_size=3))
def test_a_body_equal_to_the_expectation_matches(expect: dict[str, Any]) -> None:
    assert healthjson.mismatch(expect, json.dumps(expect)) is None


def test_canonical_numbers() -> None:
    assert healthjson.canonical_number("1.50e2") == healthjson.canonical(150) == "n:15e1"
    assert healthjson.canonical_number("-0") == healthjson.canonical(0.0) == "n:0"
    assert healthjson.canonical(True) != healthjson.canonical(1)


def test_observation_reads_bodies_in_order_and_checks_them() -> None:
    mark = "RECON-HEALTH-abc"
    text = (f"{mark}\n" + '{"database": "connected"}' + f"\n{mark} 200\n" + '{"database": "x"}\n' + f"\n{mark} 200\n"
            + f"\n{mark} 000\n")
    got = health_bodies(text, ["a.service", "b.service", "c.service"])
    assert got == {"a.service": ("200", '{"database": "connected"}'), "b.service": ("200", '{"database": "x"}\n'),
                   "c.service": ("000", "")}
    exp = (("database", "connected"),)
    assert _checked_health(*got["a.service"], exp) == Health(200)
    bad = _checked_health(*got["b.service"], exp)
    assert not bad.ok and bad.summary() == 'HTTP 200, database: expected "connected", found "x"'
    assert _checked_health(*got["c.service"], exp) == Health(None)
    assert _checked_health("503", "{}", exp) == Health(503)          # a wrong code is reason enough
    assert health_bodies("no mark\n", ["a.service"]) == {}
