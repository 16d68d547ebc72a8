"""`recon validate` and `recon plan`: read the spec and the hosts; nothing is changed anywhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.plan import Plan


@dataclass(frozen=True)
class ValidateRequest:
    files: tuple[str, ...]
    check_artifacts: bool = True


@dataclass(frozen=True)
class PlanRequest:
    files: tuple[str, ...]
    state: str | None = None
    targets: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    refresh_only: bool = False
    out: str | None = None           # save the plan here, for `recon apply PLANFILE`


@dataclass
class ValidateResult:
    files: list[str]
    services: int
    hosts: int
    waves: list[list[str]]
    externals: int = 0          # `external:` entries (recon checks them, never deploys them)


@dataclass
class PlanResult:
    plan: Plan
    saved_to: str | None = None


def run_validate(req: ValidateRequest) -> ValidateResult:
    from reconciler.spec import load_spec
    from reconciler.waves import waves

    spec = load_spec(req.files, check_artifacts=req.check_artifacts)
    return ValidateResult(list(req.files), len(spec.services), len(spec.hosts), waves(spec), len(spec.externals))


def run_plan(req: PlanRequest) -> PlanResult:
    """Observe, diff, and (with `out`) save the plan. Nothing is changed anywhere."""
    from reconciler import pipeline

    run = pipeline.prepare(req.files, req.state, req.targets, req.hosts, connect_early=True)
    # imported while the hosts answer; the text renderer (rich) too: it is the default format
    pipeline.observe(run, warm=("reconciler.plan", "reconciler.render", "reconciler.render.text"))
    plan = pipeline.plan(run, refresh_only=req.refresh_only)
    if req.out:
        from reconciler.planfile import save_plan

        save_plan(plan, req.out)
    return PlanResult(plan, req.out)
