"""Review a spec change without touching any host: `recon diff BASE HEAD` says what changes.

One job: load the spec at two points (two git refs, a git ref and the working tree, or two plain
files), tell per service and per host what the change does (versions, artifacts, config keys by
dotted path, env, secret names, limits, hosts, dependencies, ports, health, restart, hardening…),
and flag what is risky to merge (HEAD invalid, a removed service still depended on, a cycle, a port
clash, a major bump or a downgrade, a lower memory_max, weaker hardening, a host removed while
services ran on it). It renders that as text (terraform-like `+ ~ -`), JSON, or a Markdown
pull-request comment that never exceeds a size limit.

Loading:
- `recon diff OLD.yaml NEW.yaml` (no -f): two single-file specs.
- `recon diff BASE HEAD -f SPEC…`: BASE and HEAD are git refs (`origin/main`, `HEAD`, a sha); each
  SPEC (a path relative to the current directory) is read at each ref with git, and layered like
  `recon plan` does. The ref `WORKTREE` (or `.`) means the files on disk. A file missing at BASE is
  read as empty there (a new override file); a file missing at HEAD is a HEAD problem.
- Artifacts are never checked (they may not exist at an old ref), and secret values are never read:
  only secret names and their sources (`env VAULT_TOKEN`, `file /run/…`) are compared.
"""

from __future__ import annotations

import copy
import html
import io
import json
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import Origin, Problem, ReconError, SpecError
from reconciler.spec.loader import Layer, SpecPath, parse_text
from reconciler.spec.merge import Merged, merge_layers
from reconciler.spec.model import BUILTIN_DEFAULTS
from reconciler.spec.units import INFINITY, parse_size

FORMATS = ("text", "json", "markdown")
FORMAT_VERSION = 1
MARKDOWN_LIMIT = 65000
WORKTREE_REFS = ("WORKTREE", ".")
HIDDEN = "(hidden)"                       # an env value whose name looks like a secret
SET_FIELDS = ("hosts", "depends_on")      # lists shown item by item (+ node2, - vault-service)
FIELD_ORDER = ("version", "artifact", "hosts", "port", "depends_on")
RISK_LIMIT = 300                          # characters of one risk message
MD_RISKS_SHOWN = 50
KIND_WORDS = {"+": "added", "~": "changed", "-": "removed"}
_SECRETISH = re.compile(r"PASSW|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_?KEY|(^|_)KEY$", re.IGNORECASE)
_NOT_SECRETISH = re.compile(r"_(FILE|PATH|ENV|DIR|TTL|URL|ID|NAME|ROTATION\w*)$", re.IGNORECASE)
_VERSION = re.compile(r"^[vV]?(\d+(?:\.\d+)*)")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
class _Absent:
    """A key that is not there (as opposed to a key set to null)."""


_ABSENT: Any = _Absent()


# ------------------------------------------------------------------------------------------ model
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

    def rerun_command(self) -> str:
        if not self.files:
            return f"recon diff {self.base} {self.head}"
        return f"recon diff {self.base} {self.head} " + " ".join(f"-f {f}" for f in self.files)


# ---------------------------------------------------------------------------------------- loading
@dataclass
class _Side:
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
        out: dict[str, dict[str, Any]] = {}
        for name, raw in self.raw_services().items():
            svc = copy.deepcopy(BUILTIN_DEFAULTS)
            for key, value in raw.items():
                if isinstance(value, dict) and isinstance(svc.get(key), dict):
                    svc[key] = {**svc[key], **value}
                else:
                    svc[key] = value
            out[name] = svc
        return out


@dataclass
class _Text:
    """One spec file at one side: its name as given, the name shown in messages, and its text."""

    name: str
    display: str
    text: str | None          # None: the file does not exist there
    error: str | None = None  # it exists but cannot be read


def _check(merged: Merged) -> list[Problem]:
    """`recon validate --skip-artifacts` on merged layers, returning problems instead of raising."""
    from reconciler.spec import check_merged

    return check_merged(merged, check_artifacts=False)


def _side(label: str, rev: str | None, texts: list[_Text], is_head: bool, notes: list[str]) -> _Side:
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
    return _Side(label, rev, merged, problems, broken)


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


def _texts_at_ref(ref: str, rev: str, rels: list[str], root: str) -> list[_Text]:
    out: list[_Text] = []
    for rel in rels:
        display = f"{rel}@{ref}"
        r = _git(["cat-file", "blob", f"{rev}:{rel}"], root)
        if r.returncode != 0:
            out.append(_Text(rel, display, None))
            continue
        try:
            out.append(_Text(rel, display, r.stdout.decode("utf-8")))
        except UnicodeDecodeError as exc:
            out.append(_Text(rel, display, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
    return out


def _texts_on_disk(files: Sequence[str], cwd: str) -> list[_Text]:
    out: list[_Text] = []
    for f in files:
        path = Path(cwd, os.path.expanduser(f))
        if not path.is_file():
            out.append(_Text(f, f, None))
            continue
        try:
            out.append(_Text(f, f, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            out.append(_Text(f, f, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
        except OSError as exc:
            out.append(_Text(f, f, None, exc.strerror or str(exc)))
    return out


def load_diff(base: str, head: str, files: Sequence[str] = (), cwd: str | None = None) -> SpecDiff:
    """Load both sides and compute the diff; ReconError for bad refs, paths or usage."""
    cwd = cwd or os.getcwd()
    notes: list[str] = []
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
        base_side = _side(base, None, texts[0], False, notes)
        head_side = _side(head, None, texts[1], True, notes)
    else:
        root: str | None = None
        rels: list[str] = []
        if any(ref not in WORKTREE_REFS for ref in (base, head)):
            root = _repo_root(cwd)
            rels = [_repo_path(f, root, cwd) for f in files]
        loaded: list[tuple[str, str | None, list[_Text]]] = []
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
        base_side = _side(loaded[0][0], loaded[0][1], loaded[0][2], False, notes)
        head_side = _side(loaded[1][0], loaded[1][1], loaded[1][2], True, notes)
    diff = SpecDiff(base=base, head=head, base_rev=base_side.rev, head_rev=head_side.rev,
                    base_files=list(base_side.merged.files), head_files=list(head_side.merged.files),
                    files=files, head_problems=head_side.problems, base_problems=base_side.problems,
                    notes=notes)
    if base_side.broken:
        notes.append(f"the spec at {base_side.label} could not be read; every service shows as added")
        base_side = _Side(base_side.label, base_side.rev, merge_layers([]), base_side.problems)
    if head_side.broken:
        diff.computed = False
    else:
        diff.services = _service_diffs(base_side, head_side)
        diff.hosts = _host_diffs(base_side, head_side)
    diff.risks = _risks(base_side, head_side, diff)
    return diff


# -------------------------------------------------------------------------------------- diffing
def _key_path(base: str, key: Any) -> str:
    k = str(key)
    part = k if _PLAIN_KEY.match(k) else json.dumps(k, ensure_ascii=False)
    return f"{base}.{part}" if base else part


def _walk(before: Any, after: Any, path: str, spath: SpecPath, out: list[tuple[str, SpecPath, Any, Any]]) -> None:
    """Leaf differences; a mapping that appears or goes away is walked against an empty one."""
    if before is not _ABSENT and after is not _ABSENT and before == after and type(before) is type(after):
        return
    b_map, a_map = isinstance(before, dict), isinstance(after, dict)
    if (b_map or before is _ABSENT) and (a_map or after is _ABSENT) and (b_map or a_map):
        b = before if b_map else {}
        a = after if a_map else {}
        if not b and not a:
            out.append((path, spath, before, after))
            return
        for key in dict.fromkeys([*b, *a]):
            _walk(b.get(key, _ABSENT), a.get(key, _ABSENT), _key_path(path, key), (*spath, key), out)
        return
    out.append((path, spath, before, after))


def _op(before: Any, after: Any) -> str:
    return "+" if before is _ABSENT else "-" if after is _ABSENT else "~"


def _val(v: Any) -> Any:
    return None if v is _ABSENT else v


def secretish(name: str) -> bool:
    """An env var name that looks like it holds a secret (`API_TOKEN`, `DB_PASSWORD`, not `TOKEN_FILE`)."""
    return bool(_SECRETISH.search(name)) and not _NOT_SECRETISH.search(name)


def _secret_source(spec: Any) -> str:
    if isinstance(spec, dict):
        if spec.get("from_env"):
            return f"env {spec['from_env']}"
        if spec.get("from_file"):
            return f"file {spec['from_file']}"
    return "(unknown source)"


def _ordered_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    keys = list(dict.fromkeys([*after, *before]))
    first = [k for k in FIELD_ORDER if k in keys]
    return first + [k for k in keys if k not in first]


def _fields(before: dict[str, Any], after: dict[str, Any], where: Callable[[SpecPath, str], str | None]
            ) -> list[FieldDiff]:
    """Field differences of one service (or host); `where(path, op)` names the file and line."""
    out: list[FieldDiff] = []
    for key in _ordered_keys(before, after):
        b, a = before.get(key, _ABSENT), after.get(key, _ABSENT)
        if key == "secrets":
            bs = b if isinstance(b, dict) else {}
            as_ = a if isinstance(a, dict) else {}
            for name in dict.fromkeys([*as_, *bs]):
                sb = _secret_source(bs[name]) if name in bs else _ABSENT
                sa = _secret_source(as_[name]) if name in as_ else _ABSENT
                if sb != sa:
                    op = _op(sb, sa)
                    out.append(FieldDiff(_key_path("secrets", name), op, _val(sb), _val(sa), True,
                                         where(("secrets", name), op)))
            continue
        if key in SET_FIELDS and isinstance(b, list | _Absent) and isinstance(a, list | _Absent):
            b, a = ([] if b is _ABSENT else b), ([] if a is _ABSENT else a)
            if b == a:
                continue
            if sorted(map(str, b)) == sorted(map(str, a)):  # only the order changed
                out.append(FieldDiff(key, "~", b, a, where=where((key,), "~")))
                continue
            for item in a:
                if item not in b:
                    out.append(FieldDiff(key, "+", None, item, where=where((key,), "+")))
            for item in b:
                if item not in a:
                    out.append(FieldDiff(key, "-", item, None, where=where((key,), "-")))
            continue
        leaves: list[tuple[str, SpecPath, Any, Any]] = []
        _walk(b, a, key, (key,), leaves)
        for path, spath, lb, la in leaves:
            op = _op(lb, la)
            hide = key == "env" and len(spath) == 2 and secretish(str(spath[1]))
            vb, va = _val(lb), _val(la)
            if hide:
                vb, va = (HIDDEN if vb is not None else None), (HIDDEN if va is not None else None)
                if op == "~" and vb == va:
                    va = HIDDEN + " (changed)"
            out.append(FieldDiff(path, op, vb, va, hide, where(spath, op)))
    return out


def _host_list(svc: dict[str, Any]) -> list[str]:
    hosts = svc.get("hosts")
    return [str(h) for h in hosts] if isinstance(hosts, list) else []


def _hosts_text(hosts: Any) -> str:
    return ", ".join(map(str, hosts)) if isinstance(hosts, list) else str(hosts)


def _service_summary(d: ItemDiff, svc: dict[str, Any]) -> str:
    if d.op == "+":
        port = f", port {svc['port']}" if svc.get("port") is not None else ""
        return f"new service, version {d.version_after} on {_hosts_text(svc.get('hosts'))}{port}"
    if d.op == "-":
        return f"removed (was version {d.version_before} on {_hosts_text(svc.get('hosts'))})"
    parts: list[str] = []
    bumped = d.version_before != d.version_after
    if bumped:
        parts.append(f"version {d.version_before} → {d.version_after}")
    sections: dict[str, list[FieldDiff]] = {}
    for f in d.fields:
        top = re.split(r"[.\[]", f.path, maxsplit=1)[0]
        if top != "version" and not (bumped and top == "artifact"):  # a new release brings a new artifact
            sections.setdefault(top, []).append(f)
    parts += [_section_words(top, fs) for top, fs in sections.items()]
    return "; ".join(parts)


def _section_words(top: str, fields: list[FieldDiff]) -> str:
    """`config.server.workers`, `hosts +node2 -node3`, `config (3 changes)`."""
    if top in SET_FIELDS and all(f.op != "~" for f in fields):
        return top + " " + " ".join(f"{f.op}{f.after if f.op == '+' else f.before}" for f in fields)
    if len(fields) == 1:
        f = fields[0]
        if f.op == "~" and not f.sensitive:
            b, a = _before_after(f, 24)
            if len(b) + len(a) <= 40:
                return f"{f.path} {b} → {a}"
        return f"{f.op if f.op != '~' else ''}{f.path}"
    return f"{top} ({len(fields)} changes)"


def _service_diffs(base: _Side, head: _Side) -> list[ItemDiff]:
    b_all, h_all = base.services(), head.services()
    h_raw = head.raw_services()
    out: list[ItemDiff] = []
    for name in dict.fromkeys([*h_all, *b_all]):
        def where(spath: SpecPath, op: str, name: str = name) -> str | None:
            side = base if op == "-" else head
            return side.origin(("services", name, *spath))

        vb = str(b_all[name].get("version")) if name in b_all else None
        vh = str(h_all[name].get("version")) if name in h_all else None
        if name not in b_all:
            d = ItemDiff(name, "+", "", _fields({}, h_raw[name], where), None, vh, head.origin(("services", name)))
            d.summary = _service_summary(d, h_all[name])
        elif name not in h_all:
            d = ItemDiff(name, "-", "", [], vb, None, base.origin(("services", name)))
            d.summary = _service_summary(d, b_all[name])
        else:
            fields = _fields(b_all[name], h_all[name], where)
            if not fields:
                continue
            d = ItemDiff(name, "~", "", fields, vb, vh, head.origin(("services", name)))
            d.summary = _service_summary(d, h_all[name])
        out.append(d)
    return out


def _host_diffs(base: _Side, head: _Side) -> list[ItemDiff]:
    bh, hh = base.host_map(), head.host_map()
    b_services = base.services()
    out: list[ItemDiff] = []
    for name in dict.fromkeys([*hh, *bh]):
        def where(spath: SpecPath, op: str, name: str = name) -> str | None:
            return (base if op == "-" else head).origin(("hosts", name, *spath))

        if name not in bh:
            h = hh[name]
            addr = h.get("address") or ("local" if h.get("connector") == "local" else name)
            out.append(ItemDiff(name, "+", f"new host ({addr})", _fields({}, h, where),
                                where=head.origin(("hosts", name))))
        elif name not in hh:
            ran = [s for s, svc in b_services.items() if name in _host_list(svc)]
            addr = bh[name].get("address") or name
            summary = f"removed (was {addr}" + (f"; ran {', '.join(ran)} at {base.label})" if ran else ")")
            out.append(ItemDiff(name, "-", summary, [], where=base.origin(("hosts", name))))
        else:
            fields = _fields(bh[name], hh[name], where)
            if fields:
                out.append(ItemDiff(name, "~", ", ".join(dict.fromkeys(f.path for f in fields)), fields,
                                    where=head.origin(("hosts", name))))
    return out


# ----------------------------------------------------------------------------------------- risks
def _version_tuple(version: str | None) -> tuple[int, ...] | None:
    m = _VERSION.match(version or "")
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def _pad(t: tuple[int, ...], n: int) -> tuple[int, ...]:
    return t + (0,) * (n - len(t))


def _size(value: Any) -> float:
    if value is None or value is _ABSENT:
        return float("inf")
    try:
        parsed = parse_size(value)
    except (ValueError, TypeError):
        return float("nan")
    return float("inf") if parsed == INFINITY else float(parsed)


_HARDENING_RANK: dict[str, dict[Any, int]] = {
    "protect_system": {"strict": 3, "full": 2, True: 1, "true": 1, "yes": 1, False: 0, "false": 0, "no": 0},
    "protect_home": {True: 2, "true": 2, "yes": 2, "read-only": 1, "tmpfs": 1, False: 0, "false": 0, "no": 0},
}


def _weaker(key: str, before: Any, after: Any) -> bool:
    ranks = _HARDENING_RANK.get(key)
    if ranks is not None:
        try:
            b, a = ranks.get(before), ranks.get(after)
        except TypeError:  # an unhashable value in an invalid spec
            return False
        return b is not None and a is not None and a < b
    return before is True and after is not True   # no_new_privileges, private_tmp, …


def _clip(text: str, limit: int = RISK_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _problem_risk(p: Problem, base: _Side, removed: set[str], removed_hosts: set[str], deps_changed: set[str],
                  base_keys: set[tuple[str, str]]) -> Risk:
    """A HEAD validation problem as an error, in the words of what the change did when we can tell."""
    where = f"{p.origin.file}:{p.origin.line}" if p.origin and p.origin.line else (p.origin.file if p.origin
                                                                                     else None)
    parts = p.path.split(".")
    subject = parts[1] if len(parts) > 1 and parts[0] == "services" else "spec"
    m_dep = re.match(r"^unknown dependency '(.+)'$", p.message)
    m_host = re.match(r"^unknown host '(.+)'$", p.message)
    if m_dep and m_dep.group(1) in removed:
        dep = m_dep.group(1)
        msg = (f"still depends on {dep}, which this change removes: remove {dep} from its depends_on too, "
               f"or keep {dep}")
    elif m_host and m_host.group(1) in removed_hosts:
        h = m_host.group(1)
        msg = f"still runs on host {h}, which this change removes: move it off {h} first"
    elif p.message.startswith("dependency cycle"):
        msg = p.message + " (no apply order exists)"
        in_cycle = p.message.split(": ", 1)[-1].split(" → ")
        subject = next((n for n in in_cycle if n in deps_changed), subject)  # the service that closed it
    elif "is already used by service" in p.message:
        msg = "port clash: " + p.message
    else:
        msg = p.render().split(": ", 1)[1] if p.origin else p.render()
        msg = "invalid spec: " + msg.removeprefix("<spec>: ")
    if (p.path, p.message) in base_keys:
        msg += f" (already so at {base.label})"
    return Risk("error", subject, _clip(msg), where)


def _risks(base: _Side, head: _Side, diff: SpecDiff) -> list[Risk]:
    risks: list[Risk] = []
    removed = {d.name for d in diff.services if d.op == "-"}
    removed_hosts = {d.name for d in diff.hosts if d.op == "-"}
    deps_changed = {d.name for d in diff.services if any(f.path == "depends_on" for f in d.fields)}
    base_keys = {(p.path, p.message) for p in base.problems}
    for p in head.problems:
        risks.append(_problem_risk(p, base, removed, removed_hosts, deps_changed, base_keys))
    if head.broken:
        return risks
    b_all, h_all = base.services(), head.services()
    dependents: dict[str, list[str]] = {}
    for name, svc in h_all.items():
        deps = svc.get("depends_on")
        for dep in deps if isinstance(deps, list) else []:
            dependents.setdefault(str(dep), []).append(name)
    for d in diff.services:
        if d.op == "-":
            hosts = _hosts_text(b_all[d.name].get("hosts"))
            if not any(r.subject in dependents.get(d.name, []) for r in risks):
                risks.append(Risk("warning", d.name, f"removed from the spec: `recon apply` stops it and removes "
                                  f"its unit on {hosts}", d.where))
            continue
        if d.op != "~":
            continue
        risks += _service_risks(d, b_all[d.name], h_all[d.name], dependents.get(d.name, []))
    for d in diff.services:
        for f in d.fields:
            if f.path.startswith("env.") and f.sensitive and f.op != "-":
                var = f.path.split(".", 1)[1]
                risks.append(Risk("warning", d.name, f"env {var} looks like a secret but is set in plain `env:` "
                                  f"(visible in the spec and the unit file): use `secrets: {{{var}: {{from_env: …}}}}`",
                                  f.where))
    for d in diff.hosts:
        if d.op != "-":
            continue
        ran = [s for s, svc in b_all.items() if d.name in _host_list(svc)]
        still = [s for s, svc in h_all.items() if d.name in _host_list(svc)]
        if ran and not still:
            risks.append(Risk("warning", f"host {d.name}", _clip(
                f"removed while {', '.join(ran)} ran on it at {base.label}: recon stops managing {d.name} and leaves "
                f"them running there; drop {d.name} from their hosts and apply first, then remove the host"),
                d.where))
    order = {"error": 0, "warning": 1}
    return sorted(risks, key=lambda r: order.get(r.level, 2))


def _service_risks(d: ItemDiff, before: dict[str, Any], after: dict[str, Any], dependents: list[str]
                   ) -> list[Risk]:
    out: list[Risk] = []
    fields = {f.path: f for f in d.fields}

    def where(path: str) -> str | None:
        f = fields.get(path)
        return f.where if f else d.where

    vb, va = _version_tuple(d.version_before), _version_tuple(d.version_after)
    if vb is not None and va is not None and d.version_before != d.version_after:
        n = max(len(vb), len(va))
        pb, pa = _pad(vb, n), _pad(va, n)
        if pa < pb:
            out.append(Risk("warning", d.name, f"version downgrade {d.version_before} → {d.version_after}: check "
                            "that its config and data still work with the older release (`recon rollback` "
                            "switches to a kept release instead)", where("version")))
        elif pa[0] > pb[0] or (pa[0] == pb[0] == 0 and n > 1 and pa[1] > pb[1]):
            on = f"; its dependents: {', '.join(dependents)}" if dependents else ""
            out.append(Risk("warning", d.name, _clip(f"major version bump {d.version_before} → {d.version_after}: "
                            f"check the release notes for breaking changes{on}"), where("version")))
    sha_changed = "artifact.sha256" in fields
    if sha_changed and d.version_before == d.version_after:
        out.append(Risk("warning", d.name, f"artifact checksum changed without a version change: a different "
                        f"binary under the same release {d.version_after} makes history and rollback ambiguous; "
                        "bump the version", where("artifact.sha256")))
    elif not sha_changed and d.version_before != d.version_after and before.get("artifact") and after.get("artifact"):
        out.append(Risk("warning", d.name, f"version {d.version_before} → {d.version_after} but the artifact "
                        "checksum is unchanged: is it the same binary?", where("version")))
    lb, la = before.get("limits") or {}, after.get("limits") or {}
    if isinstance(lb, dict) and isinstance(la, dict):
        mb, ma = _size(lb.get("memory_max")), _size(la.get("memory_max"))
        if ma < mb:
            old = lb.get("memory_max", "no limit")
            out.append(Risk("warning", d.name, f"memory_max lowered {old} → {la.get('memory_max')}: the kernel "
                            "reclaims and OOM-kills it above that; check its peak memory first",
                            where("limits.memory_max")))
    hb, ha = before.get("hardening") or {}, after.get("hardening") or {}
    if isinstance(hb, dict) and isinstance(ha, dict):
        weaker = [k for k in dict.fromkeys([*hb, *ha]) if _weaker(k, hb.get(k), ha.get(k))]
        if weaker:
            words = ", ".join(f"{k} {json.dumps(hb.get(k))} → {json.dumps(ha.get(k))}" for k in weaker)
            out.append(Risk("warning", d.name, _clip(f"hardening weakened: {words}"), where(f"hardening.{weaker[0]}")))
    if "port" in fields and dependents and before.get("port") is not None:
        out.append(Risk("warning", d.name, _clip(f"port {before.get('port')} → {after.get('port')}: check that its "
                        f"dependents ({', '.join(dependents)}) do not call the old port"), where("port")))
    return out


# ------------------------------------------------------------------------------------- rendering
def _value(v: Any, limit: int = 80) -> str:
    from reconciler.render.common import short

    return short(v, limit)


def _before_after(f: FieldDiff, limit: int = 80) -> tuple[str, str]:
    from reconciler.plan import FieldChange
    from reconciler.render.common import before_after

    return before_after(FieldChange(f.path, f.before, f.after), limit)


def _short_sha(v: Any) -> Any:
    return v[:12] + "…" if isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]{64}", v) else v


def field_line(f: FieldDiff) -> str:
    """`~ config.server.workers: 8 → 16`, `+ hosts: node2`, `- env.DEBUG: 1`."""
    from reconciler.render.common import printable

    if f.path.endswith("sha256"):  # 64 hex digits twice make a line nobody reads: 12 tell them apart
        f = FieldDiff(f.path, f.op, *(_short_sha(v) for v in (f.before, f.after)))
    if f.op == "+":
        value = _value(f.after)
    elif f.op == "-":
        value = _value(f.before)
    else:
        b, a = _before_after(f)
        value = f"{b} → {a}"
    note = "  (source only; secret values are never read)" if f.path.startswith("secrets.") else ""
    return f"{f.op} {printable(f.path)}: {value}{note}"


def _counts_words(diff: SpecDiff) -> str:
    """`2 services changed, 1 service added; 1 host removed` (empty when nothing changes)."""
    parts = []
    for what, items in (("service", diff.services), ("host", diff.hosts)):
        if items:
            c = diff.counts(items)
            parts.append(", ".join(f"{n} {what}{'s' * (n != 1)} {w}" for w, n in c.items() if n))
    return "; ".join(parts)


def _count_line(diff: SpecDiff) -> str:
    ne, nw = len(diff.errors), len(diff.warnings)
    risk = f"Risks: {ne} error{'s' * (ne != 1)}, {nw} warning{'s' * (nw != 1)}." if ne or nw else "No risks found."
    words = _counts_words(diff)
    if not diff.computed:
        return f"No diff. {risk}"
    return f"Diff: {words}. {risk}" if words else f"No changes. {risk}"


def _ref_words(ref: str, rev: str | None) -> str:
    if ref in WORKTREE_REFS:
        return "working tree"
    return f"{ref} ({rev[:7]})" if rev and rev[:7] != ref[:7] else ref


def render_diff_text(diff: SpecDiff, color: bool) -> str:
    """Terminal text, terraform-like; colour through rich when `color`, no ANSI code at all otherwise."""
    from rich.text import Text

    from reconciler.render.common import printable

    styles = {"+": "green", "~": "yellow", "-": "red"}
    lines: list[Text] = [Text.assemble(("recon diff: ", "bold"), printable(_ref_words(diff.base, diff.base_rev)),
                                       " → ", printable(_ref_words(diff.head, diff.head_rev)))]
    files = diff.files or []
    if files:
        lines.append(Text("Spec files: " + printable(", ".join(files)), style="dim"))
    lines.append(Text())
    if not diff.computed:
        lines.append(Text(f"No diff: the spec at {printable(_ref_words(diff.head, None))} could not be read "
                          "(see Risks).", style="bold red"))
    elif not diff.has_changes:
        lines.append(Text(f"No changes: the spec at {printable(_ref_words(diff.head, None))} describes the same "
                          f"services and hosts as at {printable(_ref_words(diff.base, None))}.", style="bold green"))
    else:
        present = [op for op in ("+", "~", "-") if any(i.op == op for i in (*diff.services, *diff.hosts))]
        marks = Text("Marks:")
        for i, op in enumerate(present):
            marks.append("  " if i else " ")
            marks.append(f"{op} {KIND_WORDS[op]}", styles[op])
        lines.append(marks)
        for label, items in (("", diff.services), ("host ", diff.hosts)):
            for item in items:
                lines.append(Text())
                lines.append(Text.assemble("  ", (item.op, f"bold {styles[item.op]}"), " ",
                                           (label + printable(item.name), "bold"), ": ",
                                           printable(item.summary)))
                for f in item.fields:
                    lines.append(Text.assemble("      ", (f.op, styles[f.op]), field_line(f)[1:]))
    if diff.risks:
        lines += [Text(), Text("Risks:", style="bold")]
        for r in diff.risks:
            mark, style = ("✗ error  ", "bold red") if r.level == "error" else ("! warning", "bold yellow")
            at = f"  ({printable(r.where)})" if r.where else ""
            lines.append(Text.assemble("  ", (mark, style), " ", (printable(r.subject), "bold"), ": ",
                                       printable(r.message), (at, "dim")))
    if diff.notes:
        lines += [Text(), Text("Notes:", style="bold")]
        lines += [Text("  • " + printable(n)) for n in diff.notes]
    lines += [Text(), Text(_count_line(diff), style="bold")]
    text = Text("\n").join(lines)
    if not color:
        return text.plain + "\n"
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, force_terminal=True, color_system="standard", width=200, highlight=False, emoji=False,
            markup=False).print(text, soft_wrap=True)
    return buf.getvalue()


# Markdown ----------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    from reconciler.render.markdown import cell

    return cell(text)


def _fence(body: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    return "`" * max(3, longest + 1)


def _md_title(diff: SpecDiff) -> str:
    head = "### recon diff: " + (_counts_words(diff) or ("no changes" if diff.computed else "HEAD could not be read"))
    ne, nw = len(diff.errors), len(diff.warnings)
    if ne:
        head += f" · ❌ {ne} error{'s' * (ne != 1)}"
    if nw:
        head += f" · ⚠️ {nw} warning{'s' * (nw != 1)}"
    return head


def _md_refs(diff: SpecDiff) -> str:
    def ref(name: str, rev: str | None) -> str:
        if name in WORKTREE_REFS:
            return "working tree"
        return f"`{_cell(name)}`" + (f" (`{rev[:7]}`)" if rev and rev[:7] != name[:7] else "")

    files = f" · spec: {', '.join('`' + _cell(f) + '`' for f in diff.files)}" if diff.files else ""
    return f"{ref(diff.base, diff.base_rev)} → {ref(diff.head, diff.head_rev)}{files}"


def _md_risk(r: Risk) -> str:
    icon = "❌" if r.level == "error" else "⚠️"
    at = f" _({_cell(r.where)})_" if r.where else ""
    return f"- {icon} **{_cell(r.subject)}**: {_cell(r.message)}{at}\n"


def _md_row(item: ItemDiff, risky: dict[str, str]) -> str:
    icon = risky.get(item.name, "")
    return (f"| {_cell(item.name)} | {item.op} {item.kind}{(' ' + icon) if icon else ''} | "
            f"{_cell(_clip(item.summary, 200))} |\n")


def _md_details(label: str, item: ItemDiff) -> str:
    from reconciler.render.common import printable

    summary = html.escape(printable(f"{item.op} {label}{item.name}: {_clip(item.summary, 200)}"), quote=False)
    body = "\n".join(field_line(f) for f in item.fields)
    fence = _fence(body)
    return f"<details><summary>{summary}</summary>\n\n{fence}diff\n{body}\n{fence}\n\n</details>\n\n"


def _join(parts: list[str]) -> str:
    return "\n\n".join(p.strip("\n") for p in parts if p.strip())


def render_diff_markdown(diff: SpecDiff, limit: int = MARKDOWN_LIMIT) -> str:
    """A pull-request comment: summary line, risks, a table of services (and hosts), the field diffs
    folded in <details>. At most MD_RISKS_SHOWN risks are listed (errors first; the table marks every
    risky row with ❌/⚠️). Never longer than `limit`: field details are dropped from the end first, then
    notes, then table rows, then risks, and a closing note says what is not shown."""
    head = [_md_title(diff), _md_refs(diff)]
    if not diff.computed:
        head.append(f"No diff: the spec at {_cell(_ref_words(diff.head, None))} could not be read (see Risks).")
    elif not diff.has_changes:
        head.append(f"No changes: the spec at {_cell(_ref_words(diff.head, None))} describes the same services and "
                    f"hosts as at {_cell(_ref_words(diff.base, None))}.")
    elif not diff.risks:
        head.append("No risks found.")
    risk_items = [_md_risk(r) for r in diff.risks]
    risky: dict[str, str] = {}
    for r in diff.risks:
        if risky.get(r.subject) != "❌":
            risky[r.subject] = "❌" if r.level == "error" else "⚠️"
    svc_rows = [_md_row(i, risky) for i in diff.services]
    host_rows = [_md_row(i, {k.removeprefix("host "): v for k, v in risky.items()}) for i in diff.hosts]
    rows = svc_rows + host_rows
    details = [_md_details("", i) for i in diff.services if i.fields]
    details += [_md_details("host ", i) for i in diff.hosts if i.fields]
    notes = ["**Notes**\n\n" + "".join(f"- {_cell(n)}\n" for n in diff.notes)] if diff.notes else []
    rerun = f"`{_cell(diff.rerun_command())}`"

    def build(nr: int, nrows: int, nd: int, with_notes: bool) -> str:
        parts = list(head)
        if nr:
            parts.append("**Risks**\n\n" + "".join(risk_items[:nr]))
        svc_k = min(nrows, len(svc_rows))
        if svc_k:
            parts.append("| service | change | what |\n| --- | --- | --- |\n" + "".join(svc_rows[:svc_k]))
        host_k = max(0, nrows - len(svc_rows))
        if host_k:
            parts.append("| host | change | what |\n| --- | --- | --- |\n" + "".join(host_rows[:host_k]))
        parts.append("".join(details[:nd]))
        hidden = []
        if nr < len(risk_items):
            hidden.append(f"{len(risk_items) - nr} of {len(risk_items)} risks")
        if nrows < len(rows):
            hidden.append(f"{len(rows) - nrows} of {len(rows)} table rows")
        if nd < len(details):
            hidden.append(f"the field changes of {len(details) - nd} of {len(details)} services and hosts")
        if notes and not with_notes:
            hidden.append("notes")
        if hidden:
            parts.append(f"_Not shown (comment size limit): {', '.join(hidden)}. Run {rerun} for the full diff._")
        elif with_notes:
            parts += notes
        return _join(parts)

    def most(make: Callable[[int], str], n: int) -> str | None:
        """`make(k)` for the largest k ≤ n that fits, or None when even k = 0 does not."""
        if len(make(0)) > limit:
            return None
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(make(mid)) <= limit:
                lo = mid
            else:
                hi = mid - 1
        return make(lo)

    # Errors come first among the risks; past MD_RISKS_SHOWN the table's ❌/⚠️ marks tell the rest.
    nr, nrows, nd = min(len(risk_items), MD_RISKS_SHOWN), len(rows), len(details)
    attempts: list[Callable[[], str | None]] = [
        lambda: build(nr, nrows, nd, True) if len(build(nr, nrows, nd, True)) <= limit else None,
        lambda: most(lambda k: build(nr, nrows, k, False), nd),
        lambda: most(lambda k: build(nr, k, 0, False), nrows),
        lambda: most(lambda k: build(k, 0, 0, False), nr),
    ]
    for attempt in attempts:
        text = attempt()
        if text is not None:
            return text
    note = f"\n\n_… cut at the comment size limit; run {rerun}._"
    if len(note) >= limit:
        return note.strip()[:limit]
    return build(0, 0, 0, False)[: limit - len(note)].rstrip() + note


# JSON -----------------------------------------------------------------------------------------
def _item_dict(item: ItemDiff, with_versions: bool) -> dict[str, Any]:
    from reconciler.render.common import jsonable

    out: dict[str, Any] = {"name": item.name, "change": item.kind, "summary": item.summary}
    if with_versions:
        out["version_before"] = item.version_before
        out["version_after"] = item.version_after
    out["where"] = item.where
    out["fields"] = [{"path": f.path, "change": f.kind, "before": jsonable(f.before), "after": jsonable(f.after),
                      "sensitive": f.sensitive, "where": f.where} for f in item.fields]
    return out


def diff_to_dict(diff: SpecDiff) -> dict[str, Any]:
    """The diff as plain JSON data (`recon diff --format json`), `format_version` first."""
    return {
        "format_version": FORMAT_VERSION,
        "base": {"ref": diff.base, "rev": diff.base_rev, "files": diff.base_files,
                 "valid": not diff.base_problems, "problems": [p.as_dict() for p in diff.base_problems]},
        "head": {"ref": diff.head, "rev": diff.head_rev, "files": diff.head_files,
                 "valid": diff.head_valid, "problems": [p.as_dict() for p in diff.head_problems]},
        "summary": {
            "computed": diff.computed,
            "has_changes": diff.has_changes,
            "services": diff.counts(diff.services),
            "hosts": diff.counts(diff.hosts),
            "errors": len(diff.errors),
            "warnings": len(diff.warnings),
        },
        "services": [_item_dict(i, True) for i in diff.services],
        "hosts": [_item_dict(i, False) for i in diff.hosts],
        "risks": [{"level": r.level, "subject": r.subject, "message": r.message, "where": r.where}
                  for r in diff.risks],
        "notes": list(diff.notes),
        "exit_code": diff.exit_code,
    }


# ---------------------------------------------------------------------------------------- entry
def diff_command(base: str, head: str, files: Sequence[str], fmt: str, color: bool) -> tuple[str, int]:
    """`recon diff BASE HEAD [-f SPEC…] [--format text|json|markdown]` → (output, exit code).

    Exit 0 no changes, 2 changes and nothing error-level, 1 HEAD invalid or an error-level risk.
    Raises ReconError for usage problems (unknown ref, missing file, not a git repository)."""
    if fmt not in FORMATS:
        raise ReconError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    diff = load_diff(base, head, files)
    if fmt == "json":
        out = json.dumps(diff_to_dict(diff), indent=2, ensure_ascii=False) + "\n"
    elif fmt == "markdown":
        out = render_diff_markdown(diff) + "\n"
    else:
        out = render_diff_text(diff, color)
    return out, diff.exit_code


__all__ = ["FORMATS", "FieldDiff", "ItemDiff", "Risk", "SpecDiff", "diff_command", "diff_to_dict",
           "load_diff", "render_diff_markdown", "render_diff_text"]
