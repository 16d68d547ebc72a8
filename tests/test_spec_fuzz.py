"""Hypothesis fuzzing of the spec stage: whatever the input, the loader, the checks, `recon validate`
and `recon explain` answer with problems (file, line ≥ 1, path), deterministically, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import traceback
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reconciler.cli import main
from reconciler.errors import SpecError
from reconciler.explain import explain
from reconciler.spec import load_spec
from reconciler.spec.loader import load_file, parse_text

# Sized for < 20 s for the whole file on a busy machine (~6 s when idle).
TEXT = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])
WORK = Path(tempfile.mkdtemp(prefix="recon-spec-fuzz-"))
ART_BYTES = b"#!/bin/sh\n"
ART_SHA = hashlib.sha256(ART_BYTES).hexdigest()
(WORK / "art.bin").write_bytes(ART_BYTES)

# ---------------------------------------------------------------- (a) arbitrary text

FRAGMENTS = [
    "version: 1\n", "services:\n", "  a:\n", "    port: 8080\n", "hosts:\n", "defaults:\n", "- ", "? ", ": ",
    "&a ", "*a", "*b", "&b [*a, *a]", "<<: *a\n", "<<: ", "!!python/object:os.system ", "!!binary ", "!!set ",
    "!!omap ", "!custom ", "!!int ", "!!float ", "!!timestamp ", "2001-13-45", "0x", "0o7", "1_000", "1:30",
    ".inf", ".nan", "~", "null", "yes", "no", "on", "\t", "\x00", "\x85", "\ufeff", "\ud800", "\u2028", "é",
    "'", '"', "\\", "{", "}", "[", "]", ",", "#", "|\n", ">-\n", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! x\n",
    "\n", "  ", "9" * 60, "{a: 1, a: 2}", "[[[[[", "]]]]]",
]
yamlish = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40).map("".join)


def only_spec_errors(fn: Any, *args: Any) -> None:
    """fn(*args) returns or raises SpecError, whose problems all name a file and a line ≥ 1."""
    try:
        fn(*args)
    except SpecError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.origin is not None and p.origin.line >= 1, p.render()
            assert isinstance(p.render(), str)
    except Exception:  # pragma: no cover - the failure hypothesis looks for
        raise AssertionError(f"not a SpecError:\n{traceback.format_exc()}") from None


@TEXT
@given(st.one_of(yamlish, st.text(max_size=200)))
def test_parse_text_raises_only_spec_errors(text):
    only_spec_errors(parse_text, text, "fuzz.yaml")
    only_spec_errors(parse_text, text, "fuzz.json")


@FAST
@given(st.one_of(yamlish.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=200)))
def test_load_spec_on_arbitrary_bytes_raises_only_spec_errors(data):
    path = WORK / "bytes.yaml"
    path.write_bytes(data)
    only_spec_errors(load_file, path)
    only_spec_errors(load_spec, [str(path)])


# ---------------------------------------------------------------- (b) spec-like documents

NAMES = ["api", "db", "web", "cache", "x", "../x", "Foo", "has space", "a\n", "", "1abc", "-", "é", "a" * 70]
HOSTS = ["n1", "n2", "n3", "N4", "bad host"]


def _junk(depth: int = 2) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**200), max_value=2**200),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
        st.sampled_from(["4G", "4X", "200%", "30s", "10q", "infinity", "{port}", "{nope}", "yes", "5.0", "-1",
                         "art.bin", "missing.bin", "~nouser/x", "/", ART_SHA, "http://127.0.0.1:{port}/h"]),
    )
    if depth <= 0:
        return scalars
    inner = _junk(depth - 1)
    return st.one_of(scalars, st.lists(inner, max_size=3),
                     st.dictionaries(st.sampled_from(["a", "b", "port", "path", "x y", "1"]), inner, max_size=3))


JUNK = _junk()  # wrong types, odd strings, huge ints, NaN, None, nested lists and mappings
SIZE = st.sampled_from(["512M", "1G", "4G", "1.5G", 1048576, "infinity"])
DURATION = st.one_of(st.sampled_from(["10s", "500ms", "1min", "2h"]), st.integers(0, 600),
                     st.floats(0, 600, allow_nan=False))
FIELDS: dict[str, st.SearchStrategy[Any]] = {  # valid values of the fields that do not name hosts or services
    "version": st.sampled_from(["1.0.0", "5.0.1", "2"]),
    "artifact": st.fixed_dictionaries({"path": st.sampled_from(["art.bin"] * 4 + ["missing.bin"]),
                                       "sha256": st.sampled_from([ART_SHA] * 4 + ["0" * 64])}),
    "port": st.integers(8000, 8010),
    "args": st.lists(st.sampled_from(["--config", "{config_path}", "-v", "{port}", 3]), max_size=3),
    "env": st.dictionaries(st.sampled_from(["LOG", "MODE"]), st.sampled_from(["info", "{service}", 1, True])),
    "config": st.dictionaries(st.sampled_from(["server", "db"]),
                              st.dictionaries(st.sampled_from(["port", "host"]),
                                              st.one_of(st.integers(0, 9999), st.text(max_size=5)))),
    "limits": st.fixed_dictionaries({}, optional={"memory_max": SIZE, "memory_high": SIZE,
                                                  "cpu_quota": st.sampled_from(["50%", "200%"]),
                                                  "tasks_max": st.integers(1, 4096), "nofile": st.just(65536)}),
    "restart": st.fixed_dictionaries({}, optional={"policy": st.sampled_from(["on-failure", "always"]),
                                                   "delay_s": DURATION, "watchdog_s": DURATION}),
    "health": st.fixed_dictionaries({}, optional={"http": st.just("http://127.0.0.1:{port}/health"),
                                                  "timeout_s": DURATION}),
    "hardening": st.fixed_dictionaries({}, optional={"private_tmp": st.booleans(),
                                                     "protect_system": st.sampled_from(["strict", "full"])}),
    "user": st.sampled_from(["svc", "provisioning"]),
    "keep_releases": st.integers(1, 5),
    "reload": st.just({"signal": "HUP"}),
    "bogus_key": JUNK,
}
OPTIONAL = [k for k in FIELDS if k not in ("version", "artifact", "bogus_key")] + ["hosts", "depends_on"]
DEFAULTS_KEYS = ["user", "limits", "restart", "health", "hardening", "args", "keep_releases", "hosts"]
RATES = st.sampled_from([0, 0, 1, 3])
DIGIT = st.integers(0, 9)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Spec-like documents: a quarter fully valid, the rest with junk at any level, about `rate` in 10."""
    rate = draw(RATES)

    def pick(valid: st.SearchStrategy[Any], junk_rate: int = rate) -> Any:
        return draw(JUNK) if draw(DIGIT) < junk_rate else draw(valid)

    hosts = draw(st.lists(st.sampled_from(HOSTS[:3] if rate == 0 else HOSTS), min_size=1, max_size=3, unique=True))
    names = draw(st.lists(st.sampled_from(NAMES[:5] if rate == 0 else NAMES), min_size=1, max_size=5, unique=True))
    host_list = st.lists(st.sampled_from(hosts), min_size=1, unique=True)

    def fields(keys: list[str], i: int) -> dict[str, Any]:
        out = {}
        for key in keys:
            if key == "hosts":
                valid = host_list
            elif key == "depends_on":  # when valid, only on earlier services: no cycles
                valid = st.lists(st.sampled_from((names[:i] if rate == 0 else names) or ["api"]), unique=True,
                                 max_size=2)
            elif key == "port" and rate == 0:
                valid = st.just(8000 + i)  # no port clashes
            elif key == "artifact" and rate == 0:
                valid = st.just({"path": "art.bin", "sha256": ART_SHA})
            else:
                valid = FIELDS[key]
            out[key] = pick(valid)
        return out

    doc: dict[str, Any] = {"version": pick(st.just(1)),
                           "hosts": {h: pick(st.just({"address": "10.0.0.1"})) for h in hosts}}
    defaults_keys = draw(st.lists(st.sampled_from(DEFAULTS_KEYS), unique=True, max_size=4))
    if defaults_keys:
        doc["defaults"] = fields(defaults_keys, 0)
    services = {}
    for i, name in enumerate(names):
        keys = draw(st.lists(st.sampled_from(OPTIONAL), unique=True, max_size=6))
        if rate:
            keys += draw(st.lists(st.sampled_from(["version", "artifact", "bogus_key"]), unique=True))
        else:
            keys += ["version", "artifact"]
        services[name] = draw(JUNK) if draw(DIGIT) < rate // 2 else fields(keys, i)
    doc["services"] = draw(JUNK) if draw(DIGIT) < rate // 3 else services
    if rate and draw(st.booleans()):
        doc[draw(st.sampled_from(["extra", "defaults", "hosts"]))] = draw(JUNK)
    return doc


def dump(doc: Any, name: str) -> str:
    path = WORK / name
    if name.endswith(".json"):
        path.write_text(json.dumps(doc, indent=1, default=str))
    else:
        path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    return str(path)


def split(doc: dict[str, Any], n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A base and an override layer whose merge is `doc` (top-level keys after the nth go on top)."""
    keys = list(doc)
    return {k: doc[k] for k in keys[:n]}, {k: doc[k] for k in keys[n:]}


runner = CliRunner()


def validate(*files: str) -> Any:
    args = ["validate", "--format", "json"]
    for f in files:
        args += ["-f", f]
    result = runner.invoke(main, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(result.exception)))
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output
    return result


@SLOW
@given(specs(), st.sampled_from(["yaml", "json", "layers"]), st.integers(1, 3))
def test_structured_fuzz_load_and_validate(doc, form, cut):
    files = ([dump(d, f"{i}.yaml") for i, d in enumerate(split(doc, cut))] if form == "layers"
             else [dump(doc, f"spec.{form}")])
    try:
        spec = load_spec(files)
    except SpecError as exc:
        problems = exc.problems
        spec = None
    except Exception:  # pragma: no cover
        raise AssertionError(traceback.format_exc()) from None
    else:
        problems = []
    assert problems or spec is not None
    event("valid" if spec is not None else "invalid")
    for p in problems:
        assert p.origin is not None and p.origin.file in files and p.origin.line >= 1, p.render()
        assert p.message and isinstance(p.path, str)

    first = validate(*files)
    out = json.loads(first.stdout)
    assert first.exit_code == (1 if problems else 0)
    assert out["valid"] is (not problems)
    if problems:
        # deterministic: a second, independent run reports exactly the same problems in the same order
        assert out["problems"] == [p.as_dict() for p in problems]
        assert all(p["file"] in files and p["line"] >= 1 for p in out["problems"])
    else:
        assert sum(len(w) for w in out["waves"]) == out["services"] == len(spec.services)
        for svc in spec.services.values():
            assert svc.port is None or isinstance(svc.port, int)
            assert math.isfinite(svc.health_timeout_s)


@FAST
@given(specs(), st.lists(st.sampled_from(["api", "db", "x", "limits", "memory_max", "args", "0", "[1]", "hosts",
                                          "defaults", "version", "services", "port", "", "..", "é"]),
                         min_size=1, max_size=4).map(".".join))
def test_explain_fuzz(doc, address):
    f = dump(doc, "explain.yaml")
    try:
        text = explain([f], address)
    except SpecError as exc:
        assert exc.problems and all(p.render() for p in exc.problems)
    except Exception:  # pragma: no cover
        raise AssertionError(traceback.format_exc()) from None
    else:
        assert " = " in text.splitlines()[0]
