"""The two sides of a review: spec files read at git refs or from disk, then parsed, layered and checked.

- `recon diff OLD.yaml NEW.yaml` (no -f): two single-file specs.
- `recon diff A.yaml B.yaml -f SPEC…` (two files on disk): two versions of one layer. Each side is the
  -f files with A (or B) on top, or in A's (or B's) place when it is among the -f files itself.
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

from reconciler.errors import Origin, Problem, ReconError, SpecError, did_you_mean
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


def _resolve_ref(ref: str, root: str, cwd: str) -> str:
    if not ref or ref.startswith("-"):
        raise ReconError(f"invalid git ref {ref!r}")
    r = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], root)
    if r.returncode != 0:
        hint = (" (in CI, fetch the history: actions/checkout with `fetch-depth: 0`)"
                if "/" in ref or ref.startswith("origin") else "")
        raise ReconError(f"unknown git ref {ref!r}: no such branch, tag or commit in {root}{hint}. "
                         f"With -f SPEC, BASE and HEAD are git refs, or {' / '.join(WORKTREE_REFS)} for the "
                         "working tree, or two versions of the layer over the -f files; to compare two whole "
                         f"specs, drop -f: recon diff OLD.yaml NEW.yaml.{_ref_hint(ref, root, cwd)}")
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


def _is_file(path: str, cwd: str) -> bool:
    return Path(cwd, os.path.expanduser(path)).is_file()


def _file_hint(path: str, cwd: str) -> str:
    """' Did you mean …?' for a spec file that is not there: the closest names in its directory."""
    import difflib

    parent, name = os.path.split(path)
    try:
        names = [e.name for e in os.scandir(Path(cwd, os.path.expanduser(parent) or ".")) if e.is_file()]
    except OSError:
        return ""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)  # by name: the directory is the same
    return did_you_mean(path, [os.path.join(parent, n) for n in close])


def _ref_hint(ref: str, root: str, cwd: str) -> str:
    """' Did you mean …?' for an unknown git ref: the closest branch, tag or remote branch (or file)."""
    r = _git(["for-each-ref", "--format=%(refname:short)", "refs/heads", "refs/tags", "refs/remotes"], root)
    names = r.stdout.decode(errors="replace").split() if r.returncode == 0 else []
    return did_you_mean(ref, [*names, "HEAD", *WORKTREE_REFS]) or _file_hint(ref, cwd)


def _layer_index(base: str, head: str, files: list[str], cwd: str) -> int:
    """Where BASE and HEAD (two versions of one layer) go among the -f files: where one of them is named
    there too (that layer is compared in place, the layers above it still apply), else on top."""
    def key(path: str) -> str:
        return os.path.realpath(Path(cwd, os.path.expanduser(path)))

    at_base = [i for i, f in enumerate(files) if key(f) == key(base)]
    at_head = [i for i, f in enumerate(files) if key(f) == key(head)]
    if at_base and at_head and key(base) != key(head):
        raise ReconError(f"BASE {base!r} and HEAD {head!r} are both among the -f files: they are two versions "
                         "of one layer; name only the other layers with -f")
    named = at_base or at_head
    return named[0] if named else len(files)


def load_sides(base: str, head: str, files: Sequence[str], cwd: str, notes: list[str]
               ) -> tuple[Side, Side, int | None]:
    """BASE and HEAD, each parsed and checked, and where the compared layer sits among the -f files when
    BASE and HEAD are two files given with -f (else None); ReconError for bad refs, paths or usage."""
    files = list(files)
    if not files:
        texts = []
        for which, path in (("BASE", base), ("HEAD", head)):
            p = Path(cwd, os.path.expanduser(path))
            if not p.is_file():
                extra = (_file_hint(path, cwd) + " To compare git refs, name the spec files: "
                         f"recon diff {base} {head} -f specs/platform.yaml") if not p.exists() else ""
                raise ReconError(f"{which} {path!r} is not a spec file.{extra}")
            texts.append(_texts_on_disk([path], cwd))
        return (parse_side(base, None, texts[0], False, notes), parse_side(head, None, texts[1], True, notes),
                None)
    base_file, head_file = _is_file(base, cwd), _is_file(head, cwd)
    if base_file and head_file:  # two versions of one layer, over (or among) the -f files
        at = _layer_index(base, head, files, cwd)
        sides = []
        for path in (base, head):
            layer_files = [*files[:at], path, *files[at + 1:]]
            sides.append(_texts_on_disk(layer_files, cwd))
        _check_found(files, [("", sides[0]), ("", sides[1])], cwd, skip=at)
        return (parse_side(base, None, sides[0], False, notes), parse_side(head, None, sides[1], True, notes), at)
    if base_file != head_file and (base if head_file else head) not in WORKTREE_REFS:
        (is_, a), (is_not, b) = (("BASE", base), ("HEAD", head)) if base_file else (("HEAD", head), ("BASE", base))
        raise ReconError(f"{is_} {a!r} is a file but {is_not} {b!r} is not: with -f, BASE and HEAD are two git refs "
                         f"({' or '.join(WORKTREE_REFS)} for the files on disk), or two files: two versions of the "
                         f"layer over the -f files.{_file_hint(b, cwd)}")
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
            rev = _resolve_ref(ref, root, cwd)
            loaded.append((ref, rev, _texts_at_ref(ref, rev, rels, root)))
    _check_found(files, [(label, texts) for label, _, texts in loaded], cwd)
    return (parse_side(loaded[0][0], loaded[0][1], loaded[0][2], False, notes),
            parse_side(loaded[1][0], loaded[1][1], loaded[1][2], True, notes), None)


def _check_found(files: list[str], sides: list[tuple[str, list[SpecText]]], cwd: str, skip: int | None = None
                 ) -> None:
    """A -f file that exists at neither side is a usage error (a typo, most likely)."""
    for i, f in enumerate(files):
        if i != skip and all(texts[i].text is None and texts[i].error is None for _, texts in sides):
            labels = [label for label, _ in sides if label]
            where = f" at {' and '.join(dict.fromkeys(labels))}" if labels else ""
            raise ReconError(f"spec file {f} not found{where}{'.' + hint if (hint := _file_hint(f, cwd)) else ''}")
