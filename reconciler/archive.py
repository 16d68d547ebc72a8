"""Archive releases: an artifact that is a tar archive (`artifact: {path|url, sha256, entrypoint}`) is a tree
of files unpacked into the release directory. Pure functions read and check the archive's members
(`read_tree`), define the tree digest the plan compares (`tree_digest`, and `TREESUM_FN`, the same digest
computed by a shell on the host), and pack the checked entries again for the upload (`pack`). The one I/O
is `load_archive` (the archive's bytes from its path or URL, checked against its sha256, cached).

Digest of a release tree (docs/design.md "Archive releases"): the sha256 of the lines below, each ending in
`\\n`, sorted bytewise (`LC_ALL=C sort`), for every entry under the release directory except recon's own
files at its top (`{service}.toml*`, `provisioning-{service}.service*`):
  `d MODE PATH` for a directory, `f MODE PATH` and `SHA256  ./PATH` for a regular file,
  `l 777 PATH` and `L PATH -> TARGET` for a symbolic link,
where MODE is the permission bits in octal without leading zeros (find's `%m`) and PATH is relative.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from reconciler.errors import ReconError


class Kind(StrEnum):
    DIR = "d"
    FILE = "f"
    LINK = "l"


@dataclass(frozen=True)
class Entry:
    """One member of a release: `relpath` under the release directory, its mode, and for a file its sha256 and
    bytes, for a link its target."""

    relpath: str
    kind: Kind
    mode: int
    sha256: str = ""
    data: bytes = field(default=b"", repr=False)
    target: str = ""


@dataclass(frozen=True)
class Refusal:
    """Why a member cannot be part of a release (member as written in the archive)."""

    member: str
    problem: str

    def __str__(self) -> str:
        return f"member {self.member!r}: {self.problem}"


class ArchiveError(ReconError):
    def __init__(self, refusals: list[Refusal]) -> None:
        self.refusals = refusals
        super().__init__("; ".join(str(r) for r in refusals))


def reserved_prefixes(service: str) -> tuple[str, str]:
    """The names at the top of a release that are recon's (its config and unit, and their kept copies)."""
    return f"{service}.toml", f"provisioning-{service}.service"


def _bad_chars(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 or ch == "\\" for ch in text)


def _norm(name: str) -> str | None:
    """A member name as a path under the release ('' for the release itself), or None if it is not one."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        return None
    return "/".join(parts)


def _resolve(link: str, target: str, links: dict[str, str], depth: int) -> str | None:
    """Where symbolic link `link` (a path under the release) pointing at `target` leads, as a path under the
    release, or None when it leaves it: the archive's own links met on the way are followed, so a `..` after a
    link is taken from where that link leads."""
    if target.startswith("/") or depth > 40:
        return None
    stack = link.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(part)
        here = "/".join(stack)
        if here in links:
            resolved = _resolve(here, links[here], links, depth + 1)
            if resolved is None:
                return None
            stack = resolved.split("/") if resolved else []
    return "/".join(stack)


def read_tree(data: bytes, service: str, entrypoint: str) -> list[Entry]:
    """The entries of a release archive (gzip, bzip2, xz or plain tar), checked: no absolute member, no `..`,
    no link leading out of the release, no device, fifo or other special file, no member written through a
    link, no path twice, none of recon's own names at the top, names without control characters or
    backslashes; the entrypoint must be a regular executable member. Raises ArchiveError naming each member
    refused (all of them, in archive order). Hard links become copies of their (earlier) target."""
    members = _members(data)
    refused: list[Refusal] = []
    entries: dict[str, Entry] = {}
    links: dict[str, str] = {}
    reserved = reserved_prefixes(service)
    for m, body in members:
        rel = _norm(m.name)
        if _bad_chars(m.name):
            refused.append(Refusal(m.name, "its name has a control character or a backslash"))
            continue
        if rel is None:
            refused.append(Refusal(m.name, "absolute path or `..`: it would be written outside the release"))
            continue
        if rel == "":
            if not m.isdir():
                refused.append(Refusal(m.name, "the release directory itself must be a directory"))
            continue          # `./`: the release directory, made by recon
        if rel in entries:
            refused.append(Refusal(m.name, f"{rel} is in the archive twice"))
            continue
        top = rel.split("/", 1)[0]
        if top.startswith(reserved):
            refused.append(Refusal(m.name, f"{top} is recon's name at the top of the release (its config and "
                                           "unit are kept there)"))
            continue
        mode = m.mode & 0o7777
        if m.isdir():
            entries[rel] = Entry(rel, Kind.DIR, mode)
        elif m.isreg():
            entries[rel] = Entry(rel, Kind.FILE, mode, hashlib.sha256(body).hexdigest(), body)
        elif m.issym():
            if _bad_chars(m.linkname):
                refused.append(Refusal(m.name, "its link target has a control character or a backslash"))
                continue
            links[rel] = m.linkname
            entries[rel] = Entry(rel, Kind.LINK, 0o777, target=m.linkname)
        elif m.islnk():
            src = _norm(m.linkname)
            e = entries.get(src or "\0")
            if e is None or e.kind != Kind.FILE:
                refused.append(Refusal(m.name, f"hard link to {m.linkname!r}, which is not an earlier regular file "
                                               "of the archive"))
                continue
            entries[rel] = Entry(rel, Kind.FILE, mode, e.sha256, e.data)
        else:
            what = "a device" if (m.ischr() or m.isblk()) else "a fifo" if m.isfifo() else "a special file"
            refused.append(Refusal(m.name, f"{what}: only directories, regular files and symbolic links are allowed"))
    implicit: dict[str, Entry] = {}
    for rel in list(entries):      # parents: never a link or a file; those the archive does not list are made
        for p in _parents(posixpath.dirname(rel)):
            if p in links:
                refused.append(Refusal(rel, f"it would be written through the symbolic link {p}"))
                del entries[rel]
                break
            if p in entries and entries[p].kind != Kind.DIR:
                refused.append(Refusal(rel, f"its parent {p} is not a directory in the archive"))
                del entries[rel]
                break
            if p not in entries:   # tar makes it on the host (0755 in the upload's tar): it is part of the tree
                implicit.setdefault(p, Entry(p, Kind.DIR, 0o755))
    entries.update(implicit)
    for rel, target in links.items():
        if _resolve(rel, target, links, 0) is None:
            refused.append(Refusal(rel, f"symbolic link to {target!r} leads out of the release (or loops)"))
    ep = _norm(entrypoint)
    e = entries.get(ep or "\0")
    if ep in links:
        refused.append(Refusal(entrypoint, "the entrypoint is a symbolic link; name the file it points at"))
    elif e is None:
        refused.append(Refusal(entrypoint, "the entrypoint is not in the archive"))
    elif e.kind != Kind.FILE or not e.mode & 0o111:
        refused.append(Refusal(entrypoint, f"the entrypoint must be a regular executable file (found "
                                           f"{'a directory' if e.kind == Kind.DIR else f'mode {e.mode:o}'})"))
    if refused:
        raise ArchiveError(refused)
    return [entries[k] for k in sorted(entries)]


def _members(data: bytes) -> list[tuple[Any, bytes]]:
    """(TarInfo, bytes of a regular file) of every member, in archive order; ArchiveError if it is no tar."""
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            out = []
            for m in tar:   # in order, each body read right after its header: a compressed stream never seeks back
                f = tar.extractfile(m) if m.isreg() else None
                out.append((m, f.read() if f else b""))
            return out
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ArchiveError([Refusal("(archive)", f"not a readable tar archive ({exc})")]) from None


def _parents(path: str) -> list[str]:
    parts = path.split("/") if path else []
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def digest_lines(entries: list[Entry]) -> list[bytes]:
    """The lines the tree digest is made of (see the module's docstring), sorted bytewise."""
    lines: list[bytes] = []
    for e in entries:
        mode = "777" if e.kind == Kind.LINK else format(e.mode, "o")
        lines.append(f"{e.kind.value} {mode} {e.relpath}".encode())
        if e.kind == Kind.FILE:
            lines.append(f"{e.sha256}  ./{e.relpath}".encode())
        elif e.kind == Kind.LINK:
            lines.append(f"L {e.relpath} -> {e.target}".encode())
    return sorted(lines)


def tree_digest(entries: list[Entry]) -> str:
    """The release's digest, as `TREESUM_FN` computes it on the host."""
    return hashlib.sha256(b"".join(line + b"\n" for line in digest_lines(entries))).hexdigest()


# `treesum DIR SERVICE`: the tree digest of a release directory, as `tree_digest` defines it (prints
# `HEX  -`, or nothing when DIR cannot be entered). GNU find and coreutils; a few processes per tree.
TREESUM_FN = r"""treesum() {
  ( cd -P -- "$1" 2>/dev/null || exit 0
    { find . -mindepth 1 \( -path "./$2.toml*" -o -path "./provisioning-$2.service*" \) -prune -o \
        -printf '%y %m %P\n' \( -type l -printf 'L %P -> %l\n' -o -true \)
      find . -mindepth 1 \( -path "./$2.toml*" -o -path "./provisioning-$2.service*" \) -prune -o \
        -type f -exec sha256sum -- {} +
    } | LC_ALL=C sort | sha256sum )
}"""


def pack(entries: list[Entry]) -> bytes:
    """The checked entries as a plain tar to unpack on the host: owned by root, the modes of the archive,
    fixed times, nothing but directories, regular files and symbolic links (PAX for long names)."""
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.relpath)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = e.mode, 0, 0, 0, "root", "root"
            if e.kind == Kind.DIR:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == Kind.LINK:
                info.type, info.linkname = tarfile.SYMTYPE, e.target
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


_TREES: dict[tuple[str, str, str], list[Entry]] = {}   # (sha256, service, entrypoint) → checked entries
_ARCHIVES: dict[str, bytes] = {}   # sha256 → checked bytes (one download per run, shared by plan and apply)


def load_archive(path: Path | None, url: str | None, sha256: str, what: str) -> bytes:
    """An artifact's bytes from its path or URL, checked against `sha256` (cached by it)."""
    if sha256 in _ARCHIVES:
        return _ARCHIVES[sha256]
    try:
        if path is not None:
            data = path.read_bytes()
        elif url:
            import urllib.request

            with urllib.request.urlopen(url, timeout=60) as resp:
                data = resp.read()
        else:
            raise ReconError(f"{what}: no artifact path or url")
    except OSError as exc:
        raise ReconError(f"{what}: cannot read the artifact {path or url}: {exc}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ReconError(f"{what}: artifact checksum mismatch (expected {sha256}, got {got})")
    _ARCHIVES[sha256] = data
    return data


def load_tree(path: Path | None, url: str | None, sha256: str, service: str, entrypoint: str) -> list[Entry]:
    """An archive artifact's checked entries (`load_archive`, then `read_tree`; cached)."""
    key = (sha256, service, entrypoint)
    if key not in _TREES:
        _TREES[key] = read_tree(load_archive(path, url, sha256, f"services.{service}.artifact"), service, entrypoint)
    return _TREES[key]
