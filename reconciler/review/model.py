"""The result of a spec review: what changes per service and host, and what is risky (pure data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import Problem

WORKTREE_REFS = ("WORKTREE", ".")
KIND_WORDS = {"+": "added", "~": "changed", "-": "removed"}
RISK_LIMIT = 300                          # characters of one risk message


def clip(text: str, limit: int = RISK_LIMIT) -> str:
    """`text` cut to `limit` characters, ending in `…` when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class FieldDiff:
    """One changed value of a service or host. `op` is `+` added, `-` removed, `~` changed.

    `sensitive` fields never carry a secret: for `secrets.NAME` before/after are the secret's
    source (`env VAULT_TOKEN`), for an env var whose name looks secret they are `(hidden)`."""

    path: str
    op: str
    before: Any = None
    after: Any = None
    sensitive: bool = False
    where: str | None = None

    @property
    def kind(self) -> str:
        return KIND_WORDS[self.op]


@dataclass
class ItemDiff:
    """A service or a host that is added (`+`), changed (`~`) or removed (`-`)."""

    name: str
    op: str
    summary: str
    fields: list[FieldDiff] = field(default_factory=list)
    version_before: str | None = None
    version_after: str | None = None
    where: str | None = None
    summary_in_full: bool = False     # the summary is its one field with values: the text shows it once

    @property
    def kind(self) -> str:
        return KIND_WORDS[self.op]


@dataclass
class Risk:
    """Something a reviewer should know before merging; `error` makes `recon diff` exit 1."""

    level: str            # error | warning
    subject: str          # a service name, `host NAME`, or `spec`
    message: str
    where: str | None = None


@dataclass
class SpecDiff:
    """What changes between the spec at BASE and at HEAD, and what is risky about it."""

    base: str
    head: str
    base_rev: str | None = None
    head_rev: str | None = None
    base_files: list[str] = field(default_factory=list)
    head_files: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)     # as given with -f (empty: two plain files)
    layer_at: int | None = None   # BASE, HEAD: two files, the layer at this index over/among `files`
    services: list[ItemDiff] = field(default_factory=list)
    hosts: list[ItemDiff] = field(default_factory=list)
    risks: list[Risk] = field(default_factory=list)
    head_problems: list[Problem] = field(default_factory=list)
    base_problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    computed: bool = True     # False when the spec at HEAD could not be parsed: no diff, only its problems

    @property
    def has_changes(self) -> bool:
        return bool(self.services or self.hosts)

    @property
    def head_valid(self) -> bool:
        return not self.head_problems

    @property
    def errors(self) -> list[Risk]:
        return [r for r in self.risks if r.level == "error"]

    @property
    def warnings(self) -> list[Risk]:
        return [r for r in self.risks if r.level == "warning"]

    @property
    def exit_code(self) -> int:
        """1 HEAD invalid or an error-level risk, 2 changes, 0 no changes."""
        if self.head_problems or self.errors:
            return 1
        return 2 if self.has_changes else 0

    def counts(self, items: list[ItemDiff]) -> dict[str, int]:
        return {word: sum(1 for i in items if i.op == op) for op, word in KIND_WORDS.items()}

    def layers(self) -> list[str]:
        """The -f files in layer order; when BASE and HEAD are two versions of one layer, that layer as
        `BASE → HEAD` where it sits."""
        if self.layer_at is None:
            return list(self.files)
        return [*self.files[:self.layer_at], f"{self.base} → {self.head}", *self.files[self.layer_at + 1:]]

    def rerun_command(self) -> str:
        if not self.files:
            return f"recon diff {self.base} {self.head}"
        return f"recon diff {self.base} {self.head} " + " ".join(f"-f {f}" for f in self.files)
