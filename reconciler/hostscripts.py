"""The shell text apply runs on a host, each script written once: switch a release, restore the files kept
beside it, bounce units and wait for their health, write the env file, read files back. Pure functions
of desired services; nothing here connects. The account, directory, prune and delete scripts live in
`reconciler.ownership` (its path guard) and are re-exported here so apply takes every script from one place.
"""

from __future__ import annotations

import base64
import posixpath
import shlex
from collections.abc import Sequence

from reconciler import healthjson
from reconciler.archive import TREESUM_FN, reserved_prefixes
from reconciler.desired import DesiredService
from reconciler.ownership import delete_script, ensure_body, ensure_prelude, ensure_script, prune_script
from reconciler.plan import Effect

__all__ = ["HEALTH_FN", "JOB_MODE", "artifact_check", "binary_sha_script", "bounce_lines", "bounce_script",
           "bounce_timeout", "check_line", "delete_script", "drop_script", "ensure_body", "ensure_prelude",
           "ensure_script", "env_file_stdin",
           "env_hash_script", "keep_prev_script", "parse_results", "prune_script", "read_script",
           "restore_script", "staging_cleanup_script", "stop_script", "switch_script", "switch_steps", "unpack_script"]

JOB_MODE = "--job-mode=ignore-requirements"   # restart only this unit; dependents keep running

# `check NAME UNIT URL TIMEOUT INTERVAL STATUS [KEY CANONICAL SHOWN]...`: with fields after STATUS
# (`health.expect_json`), the answer's body must also carry them (reconciler.healthjson's awk matcher).
# Seconds are read from /proc/uptime by the shell itself (monotonic, and no `date` process per probe).
_CHECK_FN = r"""okmark() { if [ -n "${RECON_OKDIR:-}" ]; then : > "$RECON_OKDIR/$1"; fi; }
secs() {
  if read -r RECON_UP _ 2>/dev/null < /proc/uptime; then RECON_UP=${RECON_UP%.*}; else RECON_UP=$(date +%s); fi
}
check() {
  n=$1; u=$2; url=$3; t=$4; iv=$5; want=$6; shift 6
  secs; start=$RECON_UP; end=$((start + t))
  while :; do
    if ! systemctl is-active -q "$u"; then
      st=$(systemctl show -p ActiveState,SubState,Result --value "$u" | tr '\n' ' ')
      echo "RESULT	$n	fail	unit is ${st% }"; return
    fi
    if [ -z "$url" ]; then echo "RESULT	$n	ok	active"; okmark "$n"; return; fi
    why=
    if [ $# -gt 0 ]; then
      out=$(curl -q -g -s --noproxy '*' -m 2 -w '\n%{http_code}' "$url" 2>/dev/null)
      code=${out##*"$RECON_NL"}
      [ "$code" = "$want" ] && why=$(printf '%s' "${out%"$RECON_NL"*}" | LC_ALL=C awk "$RECON_JSON_AWK" "$@" 2>&1 ||
        echo "the health JSON was not checked: awk failed")
    else
      code=$(curl -q -g -s --noproxy '*' -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null)
    fi
    secs; now=$RECON_UP
    if [ "$code" = "$want" ] && [ -z "$why" ]; then
      echo "RESULT	$n	ok	HTTP $code after $((now - start))s"; okmark "$n"; return; fi
    if [ "$now" -ge "$end" ]; then
      echo "RESULT	$n	fail	HTTP ${code:-no answer}${why:+, $why} after ${t}s"; return; fi
    [ "$now" != "${said:-}" ] && said=$now && echo "PROBE	$n	${code:-000}${why:+, $why}	$((now - start))	$t"
    sleep "$iv"
  done
}"""
HEALTH_FN = f"RECON_NL='\n'\nRECON_JSON_AWK={shlex.quote(healthjson.AWK)}\n{_CHECK_FN}"

q = shlex.quote


# --------------------------------------------------------------------------------------------- health
def check_line(d: DesiredService) -> str:
    """One call of HEALTH_FN's `check` for a service: prints `RESULT name ok|fail detail`."""
    line = (f"check {q(d.service)} {q(d.unit_name)} {q(d.health_url or '')} {int(max(1, d.health_timeout_s))} "
            f"{d.health_interval_s:g} {d.health_status}")
    if d.health_url and d.health_expect_json:
        line += " " + " ".join(q(a) for a in healthjson.awk_args(dict(d.health_expect_json)))
    return line


def parse_results(out: str) -> dict[str, tuple[bool, str]]:
    """service → (healthy, detail) from the `RESULT` lines of a check's output."""
    res: dict[str, tuple[bool, str]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0] == "RESULT":
            res[parts[1]] = (parts[2] == "ok", parts[3])
    return res


def bounce_lines(restart: Sequence[str] = (), reload: Sequence[str] = ()) -> list[str]:
    """(Re)start units without touching their dependents, and reload others; failures show in the check."""
    lines = []
    if restart:
        lines.append(f"systemctl restart {JOB_MODE} {' '.join(q(u) for u in restart)} 2>/dev/null || true")
    if reload:
        lines.append(f"systemctl reload {' '.join(q(u) for u in reload)} 2>/dev/null || true")
    return lines


def bounce_script(services: Sequence[tuple[DesiredService, Effect]]) -> str:
    """Bounce-and-check: start or restart the units whose effect says so without
    touching their dependents, reload the others that reload, then wait for the health of every one of them
    at once (`RESULT` lines; `PROBE` lines while a check waits)."""
    stopped = [d for d, _ in services if d.run == "stopped"]           # `run: stopped`: deployed, not started
    running = [(d, e) for d, e in services if d.run != "stopped"]
    lines = [HEALTH_FN]
    if stopped:
        lines.append(f"systemctl disable -q --now {' '.join(q(d.unit_name) for d in stopped)} 2>&1 || true")
        lines += [f"printf 'RESULT\\t%s\\tok\\t%s\\n' {q(d.service)} 'not started (run: stopped)'; "
                  f"okmark {q(d.service)}" for d in stopped]
    lines += bounce_lines([d.unit_name for d, e in running if e in (Effect.START, Effect.RESTART)],
                          [d.unit_name for d, e in running if e == Effect.RELOAD])
    lines.append("echo STARTED")          # the health wait begins (apply times the two apart)
    lines += [check_line(d) + " &" for d, _ in running]
    lines.append("wait")
    return "\n".join(lines)


def stop_script(d: DesiredService) -> str:
    """Stop and disable a service that failed with nowhere to go back to."""
    return f"systemctl disable -q --now {q(d.unit_name)} 2>/dev/null; true"


def bounce_timeout(ds: Sequence[DesiredService]) -> int:
    """How long a bounce-and-check of these services may take on the host: the longest health timeout and a minute."""
    return int(max(d.health_timeout_s for d in ds)) + 60


# --------------------------------------------------------------------------------------------- switching
def switch_steps(d: DesiredService, version: str) -> list[str]:
    """Point `current` at `releases/{version}` atomically, link the config the service reads to it, and
    install that release's unit (written to a temp name, then renamed). No daemon-reload."""
    rel = f"{d.service_dir}/releases/{version}"
    return [
        f"ln -sfn releases/{q(version)} {q(d.service_dir)}/.current.tmp",
        f"mv -Tf {q(d.service_dir)}/.current.tmp {q(d.service_dir)}/current",
        f"ln -sfn {q(d.service_dir + '/current/' + d.service + '.toml')} {q(d.config_path)}",
        f"cp {q(rel + '/' + d.unit_name)} {q(d.unit_path + '.recon-tmp')}",     # each step its own line: `set -e`
        f"mv -f {q(d.unit_path + '.recon-tmp')} {q(d.unit_path)}",              # stops at a failed cp

    ]


def switch_script(d: DesiredService, version: str) -> str:
    """Go to a kept release (binary, config and unit together), then daemon-reload. Exits 3 when it is not kept."""
    rel = f"{d.service_dir}/releases/{version}"
    return "\n".join([f"[ -d {q(rel)} ] || {{ echo 'release {version} is not on the host' >&2; exit 3; }}",
                      *switch_steps(d, version), "systemctl daemon-reload"])


def artifact_check(d: DesiredService) -> str:
    """A test that the release's artifact on the host is the desired one: the binary's sha256, or for an archive
    release the tree digest (`archive.TREESUM_FN` defined before)."""
    if d.entrypoint:
        return f'[ "$(treesum {q(d.release_dir)} {q(d.service)})" = {q(d.sha256 + "  -")} ]'
    return f"echo {q(d.sha256 + '  ' + d.binary_path)} | sha256sum -c --quiet -"


def unpack_script(d: DesiredService, tar_word: str) -> str:
    """Place an archive release from the checked tar at `tar_word` (a shell word, quoted by the caller;
    `archive.pack`): unpacked as root with its modes into a staging directory beside the releases
    (`releases/.recon-stage-V`, which no glob of the observation or prune sees), recon's own files of an
    existing release directory (config, unit, their kept copies) copied into it, then the staging directory
    takes the release directory's place (two renames). So the same version placed again (another archive, a
    tree changed on the host) never leaves the live release half removed when the unpack fails. The tar and
    the staging are removed in any case. Nothing is switched."""
    rel = d.release_dir
    base = f"{d.service_dir}/releases/.recon"
    mine = " ".join(f'"$rel"/{q(p)}*' for p in reserved_prefixes(d.service))
    return "\n".join([
        "set -e",
        f"up={tar_word}; rel={q(rel)}; stage={q(f'{base}-stage-{d.version}')}; old={q(f'{base}-old-{d.version}')}",
        """trap 'rm -f -- "$up"; rm -rf --one-file-system -- "$stage" "$old"' EXIT""",
        f"[ ! -L \"$rel\" ] || {{ echo 'the release directory {d.release_dir} is a symbolic link' >&2; exit 3; }}",
        'rm -rf --one-file-system -- "$stage" "$old"',
        'mkdir -m 755 -- "$stage"',
        'tar -x --no-same-owner -p -f "$up" -C "$stage"',
        'if [ -d "$rel" ]; then',
        f'  for f in {mine}; do if [ -f "$f" ]; then cp -p -- "$f" "$stage"/; fi; done',
        '  mv -T -- "$rel" "$old"',
        "fi",
        'mv -T -- "$stage" "$rel"',
    ])


def _release_files(d: DesiredService) -> list[str]:
    """The files of the running release an in-place change rewrites: its config, its unit, the env file."""
    return [f"{d.release_dir}/{d.service}.toml", f"{d.release_dir}/{d.unit_name}", d.env_path]


def keep_prev_script(d: DesiredService) -> str:
    """Before an in-place change: keep the release's files beside it as `*.prev` (umask 077 and any old copy
    removed first, so the env file's copy is never readable by others)."""
    return "umask 077 ; " + " ; ".join(
        f"rm -f {q(p + '.prev')} ; [ -f {q(p)} ] && cp -p {q(p)} {q(p + '.prev')}"
        for p in _release_files(d)) + " ; true"


def restore_script(d: DesiredService, suffix: str, keep: str | None = None) -> str:
    """Put back the files kept beside the running release under `suffix` (its config, unit and env file as
    they were before the last in-place apply) and install its unit; with `keep`, the files they replace are
    kept under that suffix. Exits 3 when nothing is kept. The env file stays 0600 throughout."""
    rel = d.release_dir
    files = " ".join(q(p) for p in _release_files(d))
    save = f'[ -f "$f" ] && cp -p "$f" "$f{keep}"; ' if keep else ""
    return "\n".join([
        "umask 077; n=0",
        f"for f in {files}; do",
        f'  if [ -f "$f{suffix}" ]; then {save}mv -f "$f{suffix}" "$f"; n=$((n + 1)); fi',
        "done",
        '[ "$n" -gt 0 ] || { echo "no earlier files are kept beside the running release" >&2; exit 3; }',
        f"cp {q(rel + '/' + d.unit_name)} {q(d.unit_path)}.recon-tmp && mv -f {q(d.unit_path)}.recon-tmp "
        f"{q(d.unit_path)}",
        "systemctl daemon-reload",
    ])


def drop_script(d: DesiredService, suffix: str) -> str:
    """Remove the copies kept beside the running release under `suffix`."""
    return " ".join(["rm -f", *(q(p + suffix) for p in _release_files(d))])


# --------------------------------------------------------------------------------------------- files
def env_file_stdin(text: str) -> str:
    """An env file's content as it travels on stdin (base64: never on a command line, which `ps` shows everyone;
    `operations.place_script` decodes it into a 0600 file)."""
    return base64.encodebytes(text.encode()).decode()


def staging_cleanup_script(release_dir: str, remove: bool) -> str:
    """After a failed upload: remove the release directory (`remove`: this apply created it), and print the
    `df -Pk` line of the nearest existing directory on its way."""
    return (f"rm -rf -- {q(release_dir)}\n" if remove else "") + (
        f"p={q(release_dir)}; while [ ! -d \"$p\" ] && [ \"$p\" != / ]; do p=$(dirname \"$p\"); done\n"
        'df -Pk -- "$p" | tail -n 1')


# --------------------------------------------------------------------------------------------- reading back
def read_script(path: str) -> str:
    return f"cat {q(path)}"


def binary_sha_script(d: DesiredService, version: str) -> str:
    """The sha256 of release `version`'s binary (for an archive release its tree digest): `HEX  NAME`."""
    if d.entrypoint:
        return f"{TREESUM_FN}\ntreesum {q(f'{d.service_dir}/releases/{version}')} {q(d.service)}"
    return f"sha256sum {q(f'{d.service_dir}/releases/{version}/{d.service}')}"


def env_hash_script(env_path: str, salt: str) -> str:
    """The salted fingerprint of the env file, as the observation computes it (no output: no file)."""
    return f"[ -f {q(env_path)} ] || exit 0; {{ printf '%s\\000' {q(salt)}; cat {q(env_path)}; }} | sha256sum"


# ------------------------------------------------------------------------------------------ host-wide files
def host_file_script(path: str) -> str:
    """Write stdin to `path` (root-owned, 0644, as logrotate requires) through a temp file and a rename,
    so logrotate never reads half a file. Its directory must exist: a missing /etc/logrotate.d means
    logrotate is not installed, which is said, not papered over."""
    q = shlex.quote
    d = posixpath.dirname(path)
    return (f"set -e; [ -d {q(d)} ] || {{ echo '{d} is missing: is logrotate installed on this host?' >&2; exit 3; }}\n"
            f"t=$(mktemp {q(d)}/.recon.XXXXXX); trap 'rm -f \"$t\"' EXIT\n"
            f'cat > "$t"; chmod 0644 "$t"; chown 0:0 "$t"; mv -f "$t" {q(path)}; trap - EXIT\n')


def remove_file_script(path: str) -> str:
    """Remove a host-wide file recon wrote (the plan checked it is recon's)."""
    return f"rm -f -- {shlex.quote(path)}\n"
