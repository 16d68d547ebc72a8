"""Build deterministic stand-in service artifacts.

    python -m reconciler.standin.build [--out artifacts] [--service NAME --version V]...

Each artifact is one executable file ``{out}/{service}-{version}`` (mode 0755): the source of
``service.py`` (a ``#!/usr/bin/python3`` script) with its ``SERVICE``/``VERSION`` constants
substituted below the ``# recon-standin-constants:`` marker line. The bytes depend only on
service.py, the service name and the version, so the sha256 of an artifact is stable and can be
pinned in specs. Prints one ``sha256  path`` line per artifact (sha256sum format) and maintains
``{out}/SHA256SUMS`` (sorted, relative names, checkable with ``cd out && sha256sum -c SHA256SUMS``).
Without ``--service``/``--version`` pairs the default catalogue is built, and the tree stand-in's
archives ``{out}/standin-tree-{version}.tar.gz`` (``tree.py``: an entrypoint script and data files).
"""

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

SOURCE = Path(__file__).with_name("service.py")
SHEBANG = "#!/usr/bin/python3"
MARKER = "# recon-standin-constants:"
SUMS_NAME = "SHA256SUMS"
ARTIFACT_MODE = 0o755

BASE_VERSIONS: dict[str, str] = {
    "orchestrator": "5.0.0",
    "control-center": "5.0.0",
    "control-center-ui": "5.0.0",
    "mcp-server": "5.0.0",
    "ai-service": "5.0.0",
    "vault-service": "4.0.0",
    "extension-registry": "1.0.0",
    "api-gateway": "1.0.0",
    "provisioning-daemon": "1.0.0",
}
UPGRADE_VERSIONS: tuple[tuple[str, str], ...] = (
    ("orchestrator", "5.0.1"),
    ("control-center", "5.0.1"),
    ("orchestrator", "5.0.2-unhealthy"),
    ("control-center", "5.0.2-unhealthy"),
)
DEFAULT_CATALOGUE: tuple[tuple[str, str], ...] = (*BASE_VERSIONS.items(), *UPGRADE_VERSIONS)

SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")


def validate(service: str, version: str) -> None:
    if not SERVICE_RE.fullmatch(service):
        raise ValueError(f"invalid service name {service!r} (want lowercase letters, digits, '-')")
    if not VERSION_RE.fullmatch(version):
        raise ValueError(f"invalid version {version!r} (want letters, digits, '.', '+', '_', '-')")


def artifact_name(service: str, version: str) -> str:
    validate(service, version)
    return f"{service}-{version}"


def artifact_bytes(service: str, version: str) -> bytes:
    """The exact bytes of the artifact for ``service`` at ``version``."""
    validate(service, version)
    lines = SOURCE.read_bytes().decode("utf-8").splitlines(keepends=True)
    if not lines or lines[0].rstrip("\n") != SHEBANG:
        raise RuntimeError(f"{SOURCE} must start with {SHEBANG!r}")
    marks = [i for i, line in enumerate(lines) if line.startswith(MARKER)]
    if len(marks) != 1:
        raise RuntimeError(f"{SOURCE} must contain exactly one {MARKER!r} line, found {len(marks)}")
    i = marks[0]
    if not (lines[i + 1].startswith("SERVICE = ") and lines[i + 2].startswith("VERSION = ")):
        raise RuntimeError(f"{SOURCE}: SERVICE/VERSION constants must follow the marker line")
    lines[i + 1] = f"SERVICE = {json.dumps(service)}\n"
    lines[i + 2] = f"VERSION = {json.dumps(version)}\n"
    return "".join(lines).encode("utf-8")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _update_sums(out_dir: Path, built: dict[str, str]) -> None:
    """Merge ``built`` (name -> sha256) into SHA256SUMS; keep listed entries whose file still exists."""
    sums_path = out_dir / SUMS_NAME
    entries: dict[str, str] = {}
    if sums_path.exists():
        for line in sums_path.read_text().splitlines():
            parts = line.split(maxsplit=1)
            if len(parts) == 2:
                name = parts[1].lstrip("*")
                if "/" not in name and (out_dir / name).is_file():
                    entries[name] = _sha256_file(out_dir / name)
    entries.update(built)
    text = "".join(f"{sha}  {name}\n" for name, sha in sorted(entries.items()))
    if not sums_path.exists() or sums_path.read_text() != text:
        _write_atomic(sums_path, text.encode(), 0o644)


def build(out_dir: Path, items: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[Path, str]]:
    """Write the artifacts for ``items`` ((service, version) pairs) into ``out_dir``.

    Returns ``{(service, version): (path, sha256)}`` in input order (duplicates collapsed).
    """
    out_dir = Path(out_dir)
    wanted = list(dict.fromkeys(items))
    for service, version in wanted:
        validate(service, version)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[tuple[str, str], tuple[Path, str]] = {}
    for service, version in wanted:
        data = artifact_bytes(service, version)
        path = out_dir / artifact_name(service, version)
        unchanged = (
            path.is_file()
            and not path.is_symlink()
            and (path.stat().st_mode & 0o7777) == ARTIFACT_MODE
            and path.read_bytes() == data
        )
        if not unchanged:
            _write_atomic(path, data, ARTIFACT_MODE)
        result[(service, version)] = (path, hashlib.sha256(data).hexdigest())
    _update_sums(out_dir, {path.name: sha for path, sha in result.values()})
    return result


def build_trees(out_dir: Path) -> dict[str, tuple[Path, str]]:
    """Write the tree stand-in's archives (`standin-tree-{version}.tar.gz`, see `tree.py`) into ``out_dir``."""
    from reconciler.standin import tree

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, tuple[Path, str]] = {}
    for version in tree.VERSIONS:
        data = tree.archive_bytes(version)
        path = out_dir / f"standin-tree-{version}.tar.gz"
        if not (path.is_file() and not path.is_symlink() and path.read_bytes() == data):
            _write_atomic(path, data, 0o644)
        result[version] = (path, hashlib.sha256(data).hexdigest())
    _update_sums(out_dir, {path.name: sha for path, sha in result.values()})
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reconciler.standin.build",
        description="Build deterministic stand-in service artifacts ({out}/{service}-{version}).",
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="output dir (default: artifacts)")
    parser.add_argument("--service", action="append", default=[], metavar="NAME", help="service (repeatable)")
    parser.add_argument(
        "--version", action="append", default=[], metavar="V", help="version for the matching --service"
    )
    args = parser.parse_args(argv)
    if len(args.service) != len(args.version):
        parser.error("--service and --version must be given in pairs")
    items = list(zip(args.service, args.version, strict=True)) or list(DEFAULT_CATALOGUE)
    try:
        result = build(args.out, items)
        trees = build_trees(args.out) if not args.service else {}
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path, sha in [*result.values(), *trees.values()]:
        print(f"{sha}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
