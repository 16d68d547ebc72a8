"""The two sides of a review: spec files read at git refs or from disk, then parsed, layered and checked.

- `recon diff OLD.yaml NEW.yaml` (no -f): two single-file specs.
- `recon diff BASE HEAD -f SPEC…`: BASE and HEAD are git refs (`origin/main`, `HEAD`, a sha); each
  SPEC (a path relative to the current directory) is read at each ref with git, and layered like
  `recon plan` does. The ref `WORKTREE` (or `.`) means the files on disk. A file missing at BASE is
  read as empty there (a new override file); a file missing at HEAD is a HEAD problem.
- Artifacts are never checked (they may not exist at an old ref), and secret values are never read.

Problems in the spec files are collected on each side (`Side.problems`), never raised; a ReconError is
only for usage: an unknown ref, a missing file, not a git repository.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import Origin, Problem, ReconError, SpecError
from reconciler.review.model import WORKTREE_REFS
from reconciler.spec.loader import Layer, SpecPath, parse_text
from reconciler.spec.merge import Merged, merge_layers
from reconciler.spec.model import with_builtin_defaults


@dataclass
class Side:
    """The spec at one side (BASE or HEAD): merged layers with origins, and its problems."""

    label: str
    rev: str | None
    merged: Merged
    problems: list[Problem]
    broken: bool = False          # a file could not be parsed: no diff can be computed from it

    def origin(self, path: SpecPath) -> str | None:
        o = self.merged.origin_of(path)
        return f"{o.file}:{o.line}" if o is not None and o.line else None

    def host_map(self) -> dict[str, dict[str, Any]]:
        hosts = self.merged.data.get("hosts")
        if not isinstance(hosts, dict):
            return {}
        return {str(k): (v if isinstance(v, dict) else {}) for k, v in hosts.items()}

    def raw_services(self) -> dict[str, dict[str, Any]]:
        """Services with `defaults:` merged in (as written), effective `hosts` filled in."""
        services = self.merged.data.get("services")
        if not isinstance(services, dict):
            return {}
        all_hosts = list(self.host_map())
        out: dict[str, dict[str, Any]] = {}
        for name, raw in services.items():
            svc = dict(raw) if isinstance(raw, dict) else {}
            if not svc.get("hosts"):
                svc["hosts"] = list(all_hosts)
            out[str(name)] = svc
        return out

    def services(self) -> dict[str, dict[str, Any]]:
        """Services as recon builds them: built-in defaults under `defaults:` under the service."""
        return {name: with_builtin_defaults(raw) for name, raw in self.raw_services().items()}


@dataclass
class SpecText:
    """One spec file at one side: its name as given, the name shown in messages, and its text."""

    name: str
    display: str
    text: str | None          # None: the file does not exist there
    error: str | None = None  # it exists but cannot be read


def _check(merged: Merged) -> list[Problem]:
    """`recon validate --skip-artifacts` on merged layers, returning problems instead of raising."""
    from reconciler.spec import check_merged

    return check_merged(merged, check_artifacts=False)


def parse_side(label: str, rev: str | None, texts: list[SpecText], is_head: bool, notes: list[str]) -> Side:
    """Parse, layer and check the files of one side; problems are collected, never raised."""
    layers: list[Layer] = []
    problems: list[Problem] = []
    broken = False
    for t in texts:
        if t.error is not None:
            problems.append(Problem(f"cannot read spec file: {t.error}", "", Origin(t.display, 0)))
            broken = True
        elif t.text is None:
            if is_head:
                problems.append(Problem("spec file not found", "", Origin(t.display, 0)))
            else:
                notes.append(f"{t.name} does not exist at {label}; read as empty there")
        else:
            try:
                layers.append(parse_text(t.text, t.display))
            except SpecError as exc:
                problems.extend(exc.problems)
                broken = True
    merged = merge_layers(layers)
    if layers and not broken:  # a side that could not be parsed is not diffed (see load_diff)
        problems += _check(merged)
    return Side(label, rev, merged, problems, broken)


def _git(args: list[str], cwd: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False, timeout=120, env=env)
    except FileNotFoundError:
        raise ReconError("git is not installed; to compare two spec files use: recon diff OLD.yaml NEW.yaml") from None
    except subprocess.TimeoutExpired:
        raise ReconError(f"git {' '.join(args)} took more than 120 s") from None


def _repo_root(cwd: str) -> str:
    r = _git(["rev-parse", "--show-toplevel"], cwd)
    if r.returncode != 0:
        raise ReconError(f"{cwd} is not inside a git repository: with -f SPEC, BASE and HEAD are git refs. "
                         "To compare two spec files, use: recon diff OLD.yaml NEW.yaml")
    return os.path.realpath(r.stdout.decode().strip())


def _resolve_ref(ref: str, root: str) -> str:
    if not ref or ref.startswith("-"):
        raise ReconError(f"invalid git ref {ref!r}")
    r = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], root)
    if r.returncode != 0:
        hint = (" (in CI, fetch the history: actions/checkout with `fetch-depth: 0`)"
                if "/" in ref or ref.startswith("origin") else "")
        raise ReconError(f"unknown git ref {ref!r}: no such branch, tag or commit in {root}{hint}. "
                         f"With -f SPEC, BASE and HEAD are git refs, or {' / '.join(WORKTREE_REFS)} for the "
                         "working tree; to compare two files, drop -f: recon diff OLD.yaml NEW.yaml")
    return r.stdout.decode().strip()


def _repo_path(file: str, root: str, cwd: str) -> str:
    """`file` (relative to cwd) as a path in the repository; the file itself may be a symlink or missing."""
    joined = os.path.join(cwd, os.path.expanduser(file))
    absolute = os.path.join(os.path.realpath(os.path.dirname(joined)), os.path.basename(joined))
    rel = os.path.relpath(absolute, root)
    if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
        raise ReconError(f"spec file {file} is outside the git repository at {root}")
    return Path(rel).as_posix()


def _texts_at_ref(ref: str, rev: str, rels: list[str], root: str) -> list[SpecText]:
    out: list[SpecText] = []
    for rel in rels:
        display = f"{rel}@{ref}"
        r = _git(["cat-file", "blob", f"{rev}:{rel}"], root)
        if r.returncode != 0:
            out.append(SpecText(rel, display, None))
            continue
        try:
            out.append(SpecText(rel, display, r.stdout.decode("utf-8")))
        except UnicodeDecodeError as exc:
            out.append(SpecText(rel, display, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
    return out


def _texts_on_disk(files: Sequence[str], cwd: str) -> list[SpecText]:
    out: list[SpecText] = []
    for f in files:
        path = Path(cwd, os.path.expanduser(f))
        if not path.is_file():
            out.append(SpecText(f, f, None))
            continue
        try:
            out.append(SpecText(f, f, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            out.append(SpecText(f, f, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
        except OSError as exc:
            out.append(SpecText(f, f, None, exc.strerror or str(exc)))
    return out


def load_sides(base: str, head: str, files: Sequence[str], cwd: str, notes: list[str]) -> tuple[Side, Side]:
    """BASE and HEAD, each parsed and checked; ReconError for bad refs, paths or usage."""
    files = list(files)
    if not files:
        texts = []
        for which, path in (("BASE", base), ("HEAD", head)):
            p = Path(cwd, os.path.expanduser(path))
            if not p.is_file():
                extra = (" To compare git refs, name the spec files: "
                         f"recon diff {base} {head} -f specs/platform.yaml") if not p.exists() else ""
                raise ReconError(f"{which} {path!r} is not a spec file.{extra}")
            texts.append(_texts_on_disk([path], cwd))
        return (parse_side(base, None, texts[0], False, notes), parse_side(head, None, texts[1], True, notes))
    root: str | None = None
    rels: list[str] = []
    if any(ref not in WORKTREE_REFS for ref in (base, head)):
        root = _repo_root(cwd)
        rels = [_repo_path(f, root, cwd) for f in files]
    loaded: list[tuple[str, str | None, list[SpecText]]] = []
    for ref in (base, head):
        if ref in WORKTREE_REFS:
            loaded.append(("working tree", None, _texts_on_disk(files, cwd)))
        else:
            assert root is not None
            rev = _resolve_ref(ref, root)
            loaded.append((ref, rev, _texts_at_ref(ref, rev, rels, root)))
    for i, f in enumerate(files):
        if all(side[2][i].text is None and side[2][i].error is None for side in loaded):
            where = " and ".join(dict.fromkeys(label for label, _, _ in loaded))
            raise ReconError(f"spec file {f} not found at {where}")
    return (parse_side(loaded[0][0], loaded[0][1], loaded[0][2], False, notes),
            parse_side(loaded[1][0], loaded[1][1], loaded[1][2], True, notes))
