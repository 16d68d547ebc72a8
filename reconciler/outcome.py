"""What an apply or rollback reports: an `Event` per step while it runs, an `Outcome` per change and the
`ApplyResult` when it ends. Pure data, light to import (renderers use it without pulling in pyinfra)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class EventKind(StrEnum):
    WAVE = "wave"            # a wave starts on a host
    STEP = "step"            # one step of a change (shown with --verbose)
    OK = "ok"
    FAIL = "fail"
    ROLLBACK = "rollback"
    SKIP = "skip"
    BATCH = "batch"          # a batch of hosts starts
    INFO = "info"
    WAIT = "wait"            # a health gate is still waiting (elapsed time, last answer)


class Result(StrEnum):
    """How one planned change ended (history and the apply summary carry the value)."""

    CREATED = "created"
    UPDATED = "updated"
    REPLACED = "replaced"
    RESTARTED = "restarted"
    RELOADED = "reloaded"
    DELETED = "deleted"
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class Event:
    kind: EventKind
    host: str = ""
    service: str = ""
    message: str = ""
    wave: int = 0


@dataclass
class Outcome:
    address: str
    action: str
    result: Result
    detail: str = ""
    from_version: str | None = None
    to_version: str | None = None


class Phase(StrEnum):
    """The parts of a wave on a host that `ApplyResult.phases` times (bench/apply_phases.py reads them)."""

    UPLOAD = "upload"        # the one tar of the wave's files
    SWITCH = "switch"        # the place command: checks, accounts and dirs, files, switch, enable, daemon-reload
    START = "start"          # start/restart/reload, until systemctl returns
    HEALTH = "health"        # from then until every health check of the wave has answered


@dataclass
class PhaseTime:
    host: str
    wave: int
    phase: Phase
    seconds: float


@dataclass
class ApplyResult:
    outcomes: list[Outcome] = field(default_factory=list)
    stopped: str | None = None       # why the rollout stopped early
    phases: list[PhaseTime] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return (any(o.result in (Result.FAILED, Result.ROLLED_BACK) for o in self.outcomes)
                or self.stopped is not None)

    def count(self, result: Result) -> int:
        return sum(1 for o in self.outcomes if o.result == result)
