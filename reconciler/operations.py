"""recon's own pyinfra operations: one wave of one host in three commands, and no facts (the observation
already says what is on the host).

- `upload_wave`: one `FileUploadCommand`, a tar of every file the wave's services need (artifacts or archive
  trees, configs, units; never secrets) to a fresh name in /var/tmp;
- `place_wave`: one `StringCommand` that reads the env files' contents from stdin (`secrets_stdin`), unpacks the
  upload into a private (0700) staging directory, checks every sha256, and per service creates its missing
  account and directories, places its files with their final owner and mode (the env file 0600 from its first
  byte), then switches `current` and installs the units of those that staged, enables them, and runs one
  `daemon-reload`;
- `start_wave`: one `StringCommand` that starts, restarts or reloads the services, waits for their
  health (`RESULT` and `PROBE` lines) and prunes the old releases of those that are healthy.

Each operation is a generator in pyinfra's idiom (`@operation`, `yield` commands); `apply` runs the commands it
yields over its pyinfra session. Per-service outcomes come back as tab-separated marks (`parse_place`).
Pure: nothing here connects or reads a file.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import tarfile
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field

from pyinfra.api import operation
from pyinfra.api.command import FileUploadCommand, StringCommand

from reconciler import hostscripts as hs
from reconciler.archive import TREESUM_FN, pack
from reconciler.desired import DesiredService, release_entries
from reconciler.plan import Effect

__all__ = ["PlaceResult", "WaveItem", "parse_place", "place_script", "place_wave", "secrets_stdin", "start_script",
           "start_wave", "upload_dest", "upload_members", "upload_tar", "upload_wave"]

STAGE_DIR = "/var/tmp"      # the upload's directory: it exists on every host; the name is fresh per wave
q = shlex.quote


@dataclass(frozen=True)
class WaveItem:
    """One service of a wave on one host, and what the wave does with it.

    release: place a new artifact (binary or archive tree) in its release directory; files: place its
    config, unit (and env file); in_place: the running release's files change, so keep them beside it as
    `*.prev` first; new_release: the release directory is this apply's (removed if staging fails); mine: the
    directories recon created for it (`recorder.mine`); dropins: run-time drop-ins to remove; effect: what
    the start does; keep: the releases pruning keeps besides the newest `keep_releases`; prune: the host may
    keep more releases than that (not on a first install: nothing to prune, no processes for it)."""

    d: DesiredService
    effect: Effect
    release: bool = False
    files: bool = False
    in_place: bool = False
    new_release: bool = False
    mine: frozenset[str] = frozenset()
    dropins: tuple[str, ...] = ()
    keep: frozenset[str] = frozenset()
    prune: bool = True
    artifact: bytes = field(default=b"", repr=False)   # the checked artifact (when `release`)


# --------------------------------------------------------------------------------------------- upload
def upload_dest(token: str) -> str:
    return f"{STAGE_DIR}/recon-wave-{token}.tar"


def upload_members(items: Sequence[WaveItem]) -> list[tuple[str, bytes, int]]:
    """(name in the tar, content, mode) of every file the wave uploads: `SERVICE/artifact` (a binary),
    `SERVICE/tree.tar` (an archive's checked entries, `archive.pack`), `SERVICE/config`, `SERVICE/unit`."""
    out: list[tuple[str, bytes, int]] = []
    for it in items:
        d = it.d
        if it.release:
            if d.entrypoint:
                out.append((f"{d.service}/tree.tar", pack(release_entries(d, it.artifact)), 0o600))
            else:
                out.append((f"{d.service}/artifact", it.artifact, 0o755))
        if it.files:
            out.append((f"{d.service}/config", d.config_text.encode(), 0o640))
            out.append((f"{d.service}/unit", d.unit_text.encode(), 0o644))
    return out


def upload_tar(members: Iterable[tuple[str, bytes, int]]) -> bytes:
    """The members as one plain tar (root's, fixed times), the one upload of a wave."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uname, info.gname = len(data), mode, 0, "root", "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@operation(is_idempotent=False)
def upload_wave(members: Sequence[tuple[str, bytes, int]], token: str) -> Generator[FileUploadCommand, None, None]:
    """Upload the wave's files in one tar (`upload_members`) to `upload_dest(token)`. Nothing secret is in it."""
    if members:
        yield FileUploadCommand(io.BytesIO(upload_tar(members)), upload_dest(token))


# --------------------------------------------------------------------------------------------- place
def secrets_stdin(items: Sequence[WaveItem]) -> str:
    """What `place_script` reads on stdin: per service with secrets (in wave order) its env file base64, then
    a line `.`. Secrets never go on a command line or into the upload."""
    return "".join(hs.env_file_stdin(it.d.secrets_text) + ".\n" for it in items if _has_env(it))


def _has_env(it: WaveItem) -> bool:
    return it.files and bool(it.d.secret_names)


_READ_ENV = r"""read_env() {
  : > "$st/env.$1"
  while IFS= read -r l && [ "$l" != . ]; do printf '%s\n' "$l" >> "$st/env.$1"; done
}"""

# install SRC DEST MODE OWNER GROUP: a file that replaces one goes through a temp name beside DEST, so a reader
# never sees half a file; a new one (a release directory this wave fills: nothing reads it before the switch)
# is installed in one process
_PUT = r"""put() {
  if [ ! -e "$2" ] && [ ! -L "$2" ]; then install -m "$3" -o "$4" -g "$5" -- "$1" "$2"; return; fi
  t="${2%/*}/.${2##*/}.recon-tmp"
  rm -f -- "$t"
  install -m "$3" -o "$4" -g "$5" -- "$1" "$t" && mv -f -- "$t" "$2"
}"""


def _stage_lines(it: WaveItem) -> list[str]:
    """The body of one service's staging (run in a `set -e` subshell)."""
    d = it.d
    s = f'"$st"/{q(d.service)}'
    rel = q(d.release_dir)
    lines = [hs.ensure_body(d, set(it.mine))]
    if it.release:
        if d.entrypoint:
            lines.append(hs.unpack_script(d, f'"$st"/{q(d.service)}/tree.tar'))
        else:
            lines += [f"[ ! -L {rel} ] || {{ echo 'the release directory {d.release_dir} is a symbolic link' >&2; "
                      "exit 3; }",
                      f"[ -d {rel} ] || mkdir -m 755 -- {rel}",
                      f"put {s}/artifact {q(d.binary_path)} 755 root root"]
    if it.files:
        lines.append(f"[ -d {rel} ] || {{ echo 'release {d.version} is not on the host' >&2; exit 3; }}")
        if it.in_place:
            lines.append(hs.keep_prev_script(d))
        lines += [f"put {s}/config {q(d.release_dir + '/' + d.service + '.toml')} 640 root {q(d.group)}",
                  f"put {s}/unit {q(d.release_dir + '/' + d.unit_name)} 644 root root"]
        if _has_env(it):
            env = q(d.env_path)
            lines += ["(umask 077",
                      f" t=$(mktemp \"$(dirname -- {env})/.$(basename -- {env}).recon-XXXXXX\")",
                      f' base64 -d < "$st"/env.{q(d.service)} > "$t" && chown root:root "$t" && chmod 600 "$t" '
                      f'&& mv -f -- "$t" {env} || {{ rm -f -- "$t"; exit 1; }})']
    return lines


def _switch_lines(it: WaveItem) -> list[str]:
    """One service's switch (in a `set -e` subshell): drop-ins removed, the artifact on the host checked (unless
    this wave placed it),
    `current` and the config link switched, its unit installed, run-time property changes dropped."""
    d = it.d
    lines = [f"rm -f -- {' '.join(q(p) for p in it.dropins)}"] if it.dropins else []
    if not it.release:     # a release this wave placed came from the upload its sha256s checked
        lines.append(hs.artifact_check(d) + " || "
                     f"{{ echo 'the artifact on the host does not match sha256 {d.sha256}' >&2; exit 4; }}")
    lines += hs.switch_steps(d, d.version)
    u = q(d.unit_name)
    lines.append(f"for x in /etc/systemd/system.control/{u}.d /run/systemd/system.control/{u}.d; "
                 'do { [ ! -e "$x" ] && [ ! -L "$x" ]; } || rm -rf -- "$x"; done')
    return lines


def place_script(items: Sequence[WaveItem], token: str, members: Sequence[tuple[str, bytes, int]]) -> str:
    """The one command after the upload (see the module docstring). Prints per service `STAGE\\tS`, its
    `CREATED\\tKIND\\tNAME` marks, then `STAGED\\tS` or `FAILED\\tS\\tstage` with `ERR\\tS\\tLINE` (and `DF\\tS\\tLINE`,
    the `df -Pk` of its release directory), then `SWITCHED\\tS` or `FAILED\\tS\\tswitch`; `RELOADED` at the end."""
    up = q(upload_dest(token))
    lines = ["set -u", "umask 022",
             f"st=$(mktemp -d {STAGE_DIR}/recon-wave-{token}.XXXXXX) || "
             f"{{ echo 'cannot create a staging directory in {STAGE_DIR}' >&2; exit 3; }}",
             f"trap 'rm -rf --one-file-system -- \"$st\"; rm -f -- {up}' EXIT",
             _READ_ENV, _PUT]
    lines.append(hs.ensure_prelude())
    if any(it.d.entrypoint for it in items):
        lines.append(TREESUM_FN)
    lines += [f"read_env {q(it.d.service)}" for it in items if _has_env(it)]
    if members:
        sums = "\n".join(f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data, _ in members)
        lines += [f"tar -x --no-same-owner -p -f {up} -C \"$st\" || {{ echo 'unpacking the upload failed' >&2; "
                  "exit 4; }",
                  f"rm -f -- {up}",
                  "(cd \"$st\" && sha256sum -c --quiet --strict) <<'RECON_SUMS' || "
                  "{ echo 'the upload does not match its sha256s' >&2; exit 4; }",
                  sums, "RECON_SUMS"]
    for it in items:
        s, svc = q(it.d.service), it.d.service
        body = "\n".join(_stage_lines(it))
        cleanup = hs.staging_cleanup_script(it.d.release_dir, it.new_release)
        lines += [f"printf 'STAGE\\t%s\\n' {s}",
                  f"(set -e\n{body}\n) 2> \"$st\"/err.{s}; rc=$?",
                  f'if [ "$rc" = 0 ]; then printf \'STAGED\\t%s\\n\' {s}; ok_{_var(svc)}=1; else',
                  f"  printf 'FAILED\\t%s\\tstage\\n' {s}; sed \"s/^/ERR\\t\"{s}\"\\t/\" \"$st\"/err.{s}",
                  f"  ( {cleanup} ) 2>/dev/null | sed \"s/^/DF\\t\"{s}\"\\t/\"; ok_{_var(svc)}=0",
                  "fi"]
    lines += ["en="]
    for it in items:
        s, svc, d = q(it.d.service), it.d.service, it.d
        body = "\n".join(_switch_lines(it))
        enable = f" en=\"$en \"{q(d.unit_name)};" if d.run != "stopped" else ""
        lines += [f'if [ "$ok_{_var(svc)}" = 1 ]; then',
                  f"  (set -e\n{body}\n) 2> \"$st\"/err.{s}; rc=$?",
                  f'  if [ "$rc" = 0 ]; then printf \'SWITCHED\\t%s\\n\' {s};{enable} else',
                  f"    printf 'FAILED\\t%s\\tswitch\\n' {s}; sed \"s/^/ERR\\t\"{s}\"\\t/\" \"$st\"/err.{s}; fi",
                  "fi"]
    # Enabled without a reload of its own (`systemctl enable` reloads the manager: ~80 ms of PID 1 per call); the
    # one daemon-reload after it loads the units and their enablement together. Not skipped for units new to the
    # host, though systemd 246+ would load them on demand: the manager would not know that multi-user.target
    # wants them, and would forget a stopped one's state (its timestamps) at once.
    lines += ['[ -z "$en" ] || systemctl enable --no-reload -q $en >&2 || true',
              "systemctl daemon-reload && echo RELOADED"]
    return "\n".join(lines) + "\n"


def _var(service: str) -> str:
    return service.replace("-", "_")


@operation(is_idempotent=False)
def place_wave(items: Sequence[WaveItem], token: str, members: Sequence[tuple[str, bytes, int]]
               ) -> Generator[StringCommand, None, None]:
    """Check, place and switch the wave's services in one command (stdin: `secrets_stdin(items)`)."""
    yield StringCommand(place_script(items, token, members))


@dataclass
class PlaceResult:
    """What `place_script` printed, per service: the marks of what it created, whether it staged and
    switched, why not (ERR lines), and the `df -Pk` line of its release directory after a failure."""

    created: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    staged: set[str] = field(default_factory=set)
    switched: set[str] = field(default_factory=set)
    errors: dict[str, list[str]] = field(default_factory=dict)
    df: dict[str, str] = field(default_factory=dict)
    reloaded: bool = False


def parse_place(out: str) -> PlaceResult:
    res = PlaceResult()
    current = ""
    for line in out.splitlines():
        parts = line.split("\t")
        tag = parts[0]
        if tag == "STAGE" and len(parts) == 2:
            current = parts[1]
            res.created.setdefault(current, [])
        elif tag == "CREATED" and len(parts) == 3 and current:
            res.created[current].append((parts[1], parts[2]))
        elif tag == "STAGED" and len(parts) == 2:
            res.staged.add(parts[1])
        elif tag == "SWITCHED" and len(parts) == 2:
            res.switched.add(parts[1])
        elif tag == "ERR" and len(parts) >= 3:
            res.errors.setdefault(parts[1], []).append("\t".join(parts[2:]))
        elif tag == "DF" and len(parts) >= 3:
            res.df[parts[1]] = "\t".join(parts[2:])
        elif tag == "RELOADED":
            res.reloaded = True
    return res


# --------------------------------------------------------------------------------------------- start
def start_script(items: Sequence[WaveItem]) -> str:
    """`hostscripts.bounce_script` of the wave (start/restart/reload, health; `place_script` enabled the units),
    then the old releases of each healthy service pruned (`ownership.prune_script`), so a wave needs no command
    of its own for it."""
    lines = ['RECON_OKDIR=$(mktemp -d) || exit 3', "trap 'rm -rf -- \"$RECON_OKDIR\"' EXIT",
             hs.bounce_script([(it.d, it.effect) for it in items])]
    for it in (it for it in items if it.prune):
        lines.append(f"if [ -e \"$RECON_OKDIR\"/{q(it.d.service)} ]; then ( "
                     f"{hs.prune_script(it.d.service_dir, it.keep, it.d.keep_releases).strip()}"
                     " ) >/dev/null 2>&1 || true; fi")
    return "\n".join(lines) + "\n"


@operation(is_idempotent=False)
def start_wave(items: Sequence[WaveItem]) -> Generator[StringCommand, None, None]:
    """Start the wave's services and wait for their health in one command (`start_script`)."""
    yield StringCommand(start_script(items))


def timeout_of(items: Sequence[WaveItem]) -> int:
    return hs.bounce_timeout([it.d for it in items])

