"""The commands' runners: each takes a typed request, does the work (spec → observe → plan → apply →
state) and returns a typed result. Nothing here prints or exits: `render/` turns results into text,
JSON or Markdown, and `cli.exit_code` maps them to exit codes. An apply's interaction (showing the plan,
asking for confirmation, progress) goes through the `ApplyUI` the caller passes in.

One module per kind of command, each with its requests, results and runners: `read` (validate, plan),
`change` (apply, rollback, destroy), `day2` (status, history, diff, versions, metrics, watch, operate,
logs, force-unlock), `statecmd` (state show/pull/push/migrate), and `scope` (what a changing command
locks). `from reconciler.runner import PlanRequest` imports only the module that defines it: building
every command's dataclasses at import cost a converged plan ~40 ms of its ~0.4 s (docs/performance.md).
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC: dict[str, str] = {   # module → the names it defines (tests/test_runner_modules.py keeps this true)
    "read": "ValidateRequest PlanRequest ValidateResult PlanResult run_validate run_plan",
    "change": ("ApplyRequest RollbackRequest DestroyRequest ApplyRunResult RollbackResult ApplyUI run_apply "
               "settle_records run_rollback run_destroy"),
    "day2": ("StatusRequest HistoryRequest DiffRequest VersionsRequest MetricsRequest WatchRequest OperateRequest "
             "LogsRequest ForceUnlockRequest StatusRow StatusResult ServiceVersions VersionsResult MetricsResult "
             "WatchTick WatchResult OperateResult LogsResult HistoryResult run_status status_of external_rows "
             "run_history run_diff run_versions run_metrics run_watch run_operate run_logs run_force_unlock"),
    "statecmd": ("StateShowRequest StatePullRequest StatePushRequest StateMigrateRequest StateShowResult "
                 "StatePushResult StateMigrateResult run_state_show run_state_pull run_state_push run_state_migrate"),
    "scope": "lock_scope",
}
_HOME = {name: mod for mod, names in _PUBLIC.items() for name in names.split()}


def __getattr__(name: str) -> Any:
    """`runner.NAME`: NAME from the module that defines it, imported now."""
    mod = _HOME.get(name)
    if mod is None:
        raise AttributeError(f"module 'reconciler.runner' has no attribute {name!r}")
    return getattr(importlib.import_module(f"reconciler.runner.{mod}"), name)
