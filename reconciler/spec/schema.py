"""Check a merged spec against `schemas/recon-spec.v1.json` (JSON Schema 2020-12) with jsonschema."""

from __future__ import annotations

import json
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


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str)
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
    if v in ("minimum", "maximum", "minLength", "pattern"):
        return f"{v} {error.validator_value}"
    return None


def _leaf_errors(error: Any) -> list[Any]:
    """For anyOf/oneOf/allOf, descend to the most specific errors."""
    if error.validator in ("allOf",) and error.context:
        out: list[Any] = []
        for sub in error.context:
            out.extend(_leaf_errors(sub))
        return out
    return [error]


def schema_problems(merged: Merged) -> list[Problem]:
    """Every schema violation, each with file, line, spec path, expected and found."""
    from jsonschema import Draft202012Validator  # ~70 ms import: only when validating

    validator = Draft202012Validator(load_schema())
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for top in validator.iter_errors(merged.data):
        for error in _leaf_errors(top):
            path = tuple(error.absolute_path)
            if "propertyNames" in error.absolute_schema_path:
                path = (*path, error.instance)
            found: str | None = _describe(error.instance)
            if error.validator == "unevaluatedProperties" or error.validator == "additionalProperties":
                allowed = sorted((error.schema.get("properties") or {}).keys()) if isinstance(
                    error.schema, dict) else []
                extra = _unexpected_keys(error)
                for key in extra or ["?"]:
                    key_path = (*path, key)
                    msg = f"unknown key {key!r}"
                    p = Problem(msg, format_path(key_path), merged.origin_of(key_path),
                                expected=("one of " + ", ".join(allowed)) if allowed else "no other keys")
                    if (p.path, msg) not in seen:
                        seen.add((p.path, msg))
                        problems.append(p)
                continue
            if error.validator == "required":
                msg = error.message.replace("'", "`").replace("is a required property", "is required")
                found = None
            else:
                msg = error.message if len(error.message) < 120 else f"invalid value ({error.validator})"
                msg = "invalid value" if error.validator in ("pattern", "type", "enum", "const",
                                                             "anyOf", "oneOf") else msg
            if "propertyNames" in error.absolute_schema_path:
                msg = "invalid name"
            key = (format_path(path), msg)
            if key in seen:
                continue
            seen.add(key)
            problems.append(Problem(msg, format_path(path), merged.origin_of(path), expected=_expected(error),
                                    found=found))
    return sort_problems(problems)


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """File order, then line order."""
    return sorted(problems, key=lambda p: (p.origin.file, p.origin.line, p.origin.col) if p.origin else ("", 0, 0))


def _unexpected_keys(error: Any) -> list[str]:
    msg = error.message
    # jsonschema: "Unevaluated properties are not allowed ('x', 'y' were unexpected)"
    start, end = msg.find("("), msg.rfind(")")
    if start < 0 or end < 0:
        return []
    inner = msg[start + 1 : end]
    inner = inner.rsplit(" was unexpected", 1)[0].rsplit(" were unexpected", 1)[0]
    return [k.strip().strip("'\"") for k in inner.split(",") if k.strip()]
