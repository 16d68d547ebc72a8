"""Error types shared by every stage; each carries where in which spec file it arose."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.spec.model import Host


@dataclass(frozen=True)
class Origin:
    """Where a value came from: file, 1-based line and column."""

    file: str
    line: int
    col: int = 0
    at: tuple[str | int, ...] = field(default=(), compare=False)  # the spec path written there

    def __str__(self) -> str:
        if self.line <= 0:   # the file itself (missing, unreadable)
            return self.file
        return f"{self.file}:{self.line}" + (f":{self.col}" if self.col else "")


@dataclass
class Problem:
    """One finding about a spec: location, spec path, what was expected and what was found."""

    message: str
    path: str = ""
    origin: Origin | None = None
    expected: str | None = None
    found: str | None = None

    def render(self) -> str:
        where = str(self.origin) if self.origin else "<spec>"
        head = f"{where}: {self.path + ': ' if self.path else ''}{self.message}"
        extra = []
        if self.expected is not None:
            extra.append(f"expected {self.expected}")
        if self.found is not None:
            extra.append(f"found {self.found}")
        return head + (f" ({'; '.join(extra)})" if extra else "")

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.origin.file if self.origin else None,
            "line": self.origin.line if self.origin else None,
            "column": self.origin.col if self.origin else None,
            "path": self.path,
            "message": self.message,
            "expected": self.expected,
            "found": self.found,
        }


class ReconError(Exception):
    """Base class of every error recon reports to the user (never as a traceback)."""


@dataclass
class SpecError(ReconError):
    """The spec is invalid; carries every problem found in one run."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        n = len(self.problems)
        lines = [p.render() for p in self.problems]
        return "\n".join(lines) + f"\n{n} problem{'s' if n != 1 else ''} found"


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' (or ' Did you mean X, Y or Z?') for the closest names, '' when none is close."""
    import difflib

    close = difflib.get_close_matches(name, sorted(set(choices)), n=3, cutoff=0.6)
    if not close:
        return ""
    if len(close) == 1:
        return f" Did you mean {close[0]!r}?"
    return " Did you mean " + ", ".join(repr(c) for c in close[:-1]) + f" or {close[-1]!r}?"


def unknown_name(kind: str, name: str, choices: Iterable[str], where: str = "the spec") -> ReconError:
    """The error for a service or host name that does not exist, with the closest names and the valid ones."""
    names = sorted(set(choices))
    hint = did_you_mean(name, names)
    listing = f" ({kind}s: {', '.join(names)})" if names and not hint else ""
    return ReconError(f"no {kind} {name!r} in {where}.{hint}{listing}".replace(". (", " ("))


def connect_error_message(h: Host, msg: str, key_mismatch: bool = False) -> str:
    """Why a host could not be reached, with a hint; a changed host key is called a mismatch and never
    comes with advice to accept it (shared by the pyinfra and the OpenSSH sessions)."""
    where = "locally" if h.is_local else f"{h.user + '@' if h.user else ''}{h.address}:{h.port}"
    hint = ""
    low = msg.lower()
    known = h.known_hosts or "~/.ssh/known_hosts"
    if key_mismatch:  # never suggest accepting the new key: that is what an attacker would want
        return (f"cannot connect to host {h.name!r} ({where}): HOST KEY MISMATCH: the key {h.address} presented "
                f"differs from the one recorded for it in {known}. The host's identity changed: it was "
                "reinstalled or re-keyed, or someone is intercepting the connection (possibly an attack). "
                "recon did not log in and changed nothing. Find out why before you connect; compare the "
                "fingerprint on the host's console (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)")
    if "host key" in low or "not found in known_hosts" in low or "unknown host" in low:
        hint = f" (host key not in {known}; add it with ssh-keyscan after checking it)"
    elif "auth" in low:
        hint = " (authentication failed: check `user` and `ssh_key`)"
    return f"cannot connect to host {h.name!r} ({where}): {msg}{hint}"
