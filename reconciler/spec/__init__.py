"""Spec stage: load YAML/JSON files, layer them, check them (schema + semantics), build the model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reconciler.errors import Problem, SpecError
from reconciler.spec.loader import Layer, format_path, load_file
from reconciler.spec.merge import Merged, apply_defaults, merge_layers
from reconciler.spec.model import Host, Service, Spec, build_spec

__all__ = ["Host", "Merged", "Service", "Spec", "check_merged", "format_path", "load_merged", "load_spec"]


def load_merged(files: Sequence[str | Path]) -> Merged:
    """Parse and layer the files (no checks); SpecError for unreadable or malformed files."""
    if not files:
        raise SpecError([Problem("no spec file given", expected="-f SPEC (one or more)")])
    layers: list[Layer] = []
    problems: list[Problem] = []
    for f in files:
        try:
            layers.append(load_file(f))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return merge_layers(layers)


def check_merged(merged: Merged, check_artifacts: bool = True) -> list[Problem]:
    """Apply `defaults:` to layered files and return every schema and semantic problem, sorted.

    Both kinds run, so one run reports everything; a semantic problem at a path the schema already
    reported is left out. Never raises for bad input: the semantic checks accept data of any shape.
    """
    from reconciler.spec.checks import semantic_problems
    from reconciler.spec.schema import schema_problems, sort_problems

    problems = schema_problems(merged)
    apply_defaults(merged)
    seen = {p.path for p in problems}
    problems += [p for p in semantic_problems(merged, check_artifacts) if p.path not in seen]
    return sort_problems(problems, merged.files)


def load_spec(files: Sequence[str | Path], check_artifacts: bool = True) -> Spec:
    """Load, layer, validate and build the spec; raise SpecError listing every problem."""
    merged = load_merged(files)
    problems = check_merged(merged, check_artifacts)
    if problems:
        raise SpecError(problems)
    return build_spec(merged)
