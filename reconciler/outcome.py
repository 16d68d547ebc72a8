"""What an apply or rollback reports: an `Event` per step while it runs, an `Outcome` per change and the
`ApplyResult` when it ends. Pure data, light to import (renderers use it without pulling in pyinfra)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Event:
    kind: str            # wave | step | ok | fail | rollback | skip | batch | info
    host: str = ""
    service: str = ""
    message: str = ""
    wave: int = 0


@dataclass
class Outcome:
    address: str
    action: str
    # created | updated | replaced | restarted | reloaded | deleted | rolled-back | failed | skipped
    result: str
    detail: str = ""
    from_version: str | None = None
    to_version: str | None = None


@dataclass
class ApplyResult:
    outcomes: list[Outcome] = field(default_factory=list)
    stopped: str | None = None       # why the rollout stopped early

    @property
    def failed(self) -> bool:
        return any(o.result in ("failed", "rolled-back") for o in self.outcomes) or self.stopped is not None

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)
