"""Check a merged spec against `schemas/recon-spec.v1.json` (JSON Schema 2020-12) with jsonschema."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from reconciler.errors import Problem
from reconciler.spec.loader import format_path
from reconciler.spec.merge import Merged

SCHEMA_NAME = "recon-spec.v1.json"


def schema_path() -> Path:
    """The schema file: `schemas/` of the source tree (the single source of truth)."""
    here = Path(__file__).resolve().parents[2] / "schemas" / SCHEMA_NAME
    if here.exists():
        return here
    return Path(__file__).resolve().parents[1] / "schemas" / SCHEMA_NAME  # installed copy


@cache
def load_schema() -> dict[str, Any]:
    return json.loads(schema_path().read_text(encoding="utf-8"))


@cache
def _compile(pattern: str) -> re.Pattern[str]:
    """A schema pattern with ECMA-262's `$` (end of input), not Python's (which also matches before a
    final newline, so `^[a-z]+$` would accept "name\\n" as a service name)."""
    body = pattern[:-1]
    if pattern.endswith("$") and (len(body) - len(body.rstrip("\\"))) % 2 == 0:  # an anchor, not `\$`
        pattern = body + r"\Z"
    return re.compile(pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _compile(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _is_integer(checker: Any, instance: Any) -> bool:
    """JSON Schema counts 8080.0 as an integer; in a spec it is a typo, and recon needs real ints."""
    return isinstance(instance, int) and not isinstance(instance, bool)


@cache
def _validator_class() -> Any:
    from jsonschema import Draft202012Validator, validators  # ~70 ms import: only when validating

    return validators.extend(
        Draft202012Validator,
        validators={"pattern": _pattern},
        type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
    )


def _describe(value: Any) -> str:
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):  # e.g. keys json cannot write
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected(error: Any) -> str | None:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "x-expected" in schema:
        return str(schema["x-expected"])
    v = error.validator
    if v == "type":
        t = error.validator_value
        return " or ".join(t) if isinstance(t, list) else str(t)
    if v == "enum":
        return "one of " + ", ".join(_describe(x) for x in error.validator_value)
    if v == "const":
        return _describe(error.validator_value)
    value = error.validator_value
    simple = {
        "minimum": f"at least {value}",
        "maximum": f"at most {value}",
        "exclusiveMinimum": f"more than {value}",
        "exclusiveMaximum": f"less than {value}",
        "minLength": "a non-empty string" if value == 1 else f"at least {value} characters",
        "maxLength": f"at most {value} characters",
        "pattern": f"text matching {value}",
        "uniqueItems": "each item once",
        "minItems": f"at least {value} items",
        "maxItems": f"at most {value} items",
        "anyOf": "one of the allowed forms",
        "oneOf": "exactly one of the allowed forms",
    }
    return simple.get(v, f"a value that satisfies `{v}`") if v != "required" else None


def _leaf_errors(error: Any) -> list[Any]:
    """For anyOf/oneOf/allOf, descend to the most specific errors."""
    if error.validator in ("allOf",) and error.context:
        out: list[Any] = []
        for sub in error.context:
            out.extend(_leaf_errors(sub))
        return out
    return [error]


def _unexpected_keys(error: Any) -> list[str]:
    """The keys an `additionalProperties: false` error is about, in the order they were written."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    props = schema.get("properties") or {}
    patterns = [_compile(p) for p in schema.get("patternProperties") or {}]
    instance = error.instance if isinstance(error.instance, dict) else {}
    return [k for k in instance if k not in props and not any(p.search(str(k)) for p in patterns)]


def _json_type(value: Any) -> str:
    """What a value is, in the schema's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} (quote it for a string)"


_BOOL_HINT = " (YAML reads unquoted yes, no, on, off, true, false as booleans: quote it for a string)"


def _cache_key(data: Any) -> str | None:
    """A digest of the schema and the document: equal digests validate alike."""
    try:
        doc = json.dumps(data, sort_keys=True, allow_nan=True, default=repr)
    except (TypeError, ValueError, RecursionError):
        return None
    import hashlib

    return hashlib.sha256(schema_path().read_bytes() + b"\0" + doc.encode()).hexdigest()


def _cache_dir() -> Path | None:
    if os.environ.get("RECON_NO_CACHE"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "recon" / "schema-valid"


def schema_problems(merged: Merged) -> list[Problem]:
    """Every schema violation, each with file, line, spec path, expected and found.

    A document that passed once is remembered by digest (`~/.cache/recon`, off with RECON_NO_CACHE=1),
    so validating it again skips importing jsonschema (~55 ms of a ~170 ms start); failures are never
    cached, so problems are always computed in full."""
    cache = _cache_dir()
    key = _cache_key(merged.data) if cache is not None else None
    if cache is not None and key is not None and (cache / key).exists():
        return []
    problems = _schema_problems(merged)
    if not problems and cache is not None and key is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            (cache / key).touch()
        except OSError:
            pass
    return problems


def _schema_problems(merged: Merged) -> list[Problem]:
    validator = _validator_class()(load_schema())
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()

    value_paths: set[str] = set()  # one problem about a value per path: `"1"` for `version` is not also `!= 1`

    def add(msg: str, path: tuple[Any, ...], expected: str | None, found: str | None, about_value: bool) -> None:
        key = (format_path(path), msg)
        if key in seen or (about_value and key[0] in value_paths):
            return
        seen.add(key)
        if about_value:
            value_paths.add(key[0])
        problems.append(Problem(msg, key[0], merged.origin_of(path), expected=expected, found=found))

    for top in validator.iter_errors(merged.data):
        for error in _leaf_errors(top):
            path = tuple(error.absolute_path)
            if error.validator in ("unevaluatedProperties", "additionalProperties"):
                allowed = sorted((error.schema.get("properties") or {}).keys()) if isinstance(
                    error.schema, dict) else []
                for key in _unexpected_keys(error):
                    add(f"unknown key {key!r}", (*path, key),
                        ("one of " + ", ".join(allowed)) if allowed else "no other keys", None, False)
                continue
            found: str | None = _describe(error.instance)
            if "propertyNames" in error.absolute_schema_path:
                path, msg = (*path, error.instance), "invalid name"
            elif error.validator == "required":
                msg = error.message.replace("'", "`").replace("is a required property", "is required")
                found = None
            elif error.validator == "type":
                msg = f"wrong type: {_json_type(error.instance)}"
            elif error.validator in ("pattern", "enum", "const", "anyOf", "oneOf"):
                msg = "invalid value"
            else:
                msg = error.message if len(error.message) < 120 else f"invalid value ({error.validator})"
            if isinstance(error.instance, bool) and error.validator in ("type", "enum", "const"):
                found = f"{found}{_BOOL_HINT}"
            add(msg, path, _expected(error), found, error.validator != "required")
    return sort_problems(problems)


def sort_problems(problems: list[Problem], files: list[str] | None = None) -> list[Problem]:
    """In the order of the files (as given, else by name), then line, column, path and message: the
    same spec always gives the same list, whatever order the checks found them in."""
    rank = {f: i for i, f in enumerate(files or [])}

    def key(p: Problem) -> tuple[Any, ...]:
        if p.origin is None:
            return (-1, "", 0, 0, p.path, p.message)
        return (rank.get(p.origin.file, len(rank)), p.origin.file, p.origin.line, p.origin.col, p.path, p.message)

    return sorted(problems, key=key)
