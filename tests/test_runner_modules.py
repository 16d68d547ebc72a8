"""The runner package's lazy names: its table names what each module defines, and a plan imports only the
module of its own types (the others' dataclasses cost a converged plan ~40 ms at import)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import reconciler.runner as runner

PACKAGE = Path(runner.__file__).parent


def test_the_table_names_what_each_module_defines() -> None:
    for mod, names in runner._PUBLIC.items():
        tree = ast.parse((PACKAGE / f"{mod}.py").read_text(encoding="utf-8"))
        defined = [n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)
                   and not n.name.startswith("_")]
        assert names.split() == defined, mod
    assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") == sorted(runner._PUBLIC)


def test_names_resolve_and_unknown_ones_fail() -> None:
    from reconciler.runner import PlanResult, StatusResult, lock_scope
    from reconciler.runner.day2 import StatusResult as Direct

    assert StatusResult is Direct and PlanResult.__module__ == "reconciler.runner.read"
    assert lock_scope.__module__ == "reconciler.runner.scope"
    with pytest.raises(AttributeError, match="no attribute 'run_plann'"):
        runner.run_plann  # noqa: B018


def test_a_plan_imports_only_its_own_types() -> None:
    code = ("import sys\nfrom reconciler.runner import PlanRequest, run_plan\n"
            "print(sorted(m for m in sys.modules if m.startswith('reconciler.runner')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['reconciler.runner', 'reconciler.runner.read']"
