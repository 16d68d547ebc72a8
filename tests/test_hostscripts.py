"""The host scripts apply runs (`reconciler/hostscripts.py`), without a host: each is run by /bin/sh on this
machine against a tree in tmp_path, with `systemctl` and `curl` stand-ins on PATH that log their arguments
and answer as a host would; the parts that only systemd can show are pinned as text."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from reconciler import hostscripts as hs
from reconciler.desired import DesiredService
from reconciler.plan import Effect

SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$LOG"
case $1 in
  is-active) case " $* " in *" $DOWN "*) exit 3;; esac; exit 0;;
  show) echo failed; echo dead; echo exit-code;;
esac
exit 0
"""
CURL = """#!/bin/sh
echo "curl $*" >> "$LOG"
printf %s "${CODE:-200}"
"""


def _svc(tmp: Path, name: str = "api", version: str = "2.0", **fields: object) -> DesiredService:
    sd = tmp / "opt" / name
    values: dict[str, object] = dict(
        host="n1", service=name, version=version, sha256="0" * 64, unit_name=f"provisioning-{name}.service",
        unit_path=str(tmp / "etc/systemd/system" / f"provisioning-{name}.service"), unit_text="[Unit]\n",
        config_path=str(tmp / "etc/provisioning" / f"{name}.toml"), config_text="a = 1\n",
        env_path=str(tmp / "etc/provisioning" / f"{name}.env"), service_dir=str(sd),
        release_dir=str(sd / "releases" / version), binary_path=str(sd / "releases" / version / name),
        data_dir=str(tmp / "data" / name), user="svc", group="svc", depends_on=(),
        health_url=f"http://127.0.0.1:1/{name}", health_timeout_s=2.0, health_interval_s=0.1, health_status=200,
        reload_signal=None, keep_releases=2, config={}, secret_names=())
    values.update(fields)
    return DesiredService(**values)  # type: ignore[arg-type]


@pytest.fixture
def sh(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run a script with /bin/sh; systemctl and curl are stand-ins logging to tmp/log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("systemctl", SYSTEMCTL), ("curl", CURL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)

    def run(script: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(tmp_path / "log"), **env}
        return subprocess.run(["/bin/sh", "-c", script], input=stdin, capture_output=True, text=True, timeout=30,
                              env=full)
    return run


def _log(tmp: Path) -> list[str]:
    p = tmp / "log"
    return p.read_text().splitlines() if p.exists() else []


def _releases(tmp: Path, d: DesiredService, versions: list[str]) -> None:
    for v in versions:
        rel = Path(d.service_dir) / "releases" / v
        rel.mkdir(parents=True)
        (rel / d.service).write_text(f"binary {v}\n")
        (rel / f"{d.service}.toml").write_text(f"version = {v!r}\n")
        (rel / d.unit_name).write_text(f"[Unit]\nDescription={v}\n")
    Path(d.unit_path).parent.mkdir(parents=True, exist_ok=True)
    Path(d.config_path).parent.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------------- switch
def test_switch_points_current_config_and_unit_at_a_kept_release(tmp_path: Path, sh) -> None:  # type: ignore[no-untyped-def]
    d = _svc(tmp_path)
    _releases(tmp_path, d, ["1.0", "2.0"])
    for v in ("2.0", "1.0"):
        res = sh("set -e\n" + hs.switch_script(d, v))
        assert res.returncode == 0, res.stderr
        assert os.readlink(Path(d.service_dir) / "current") == f"releases/{v}"
        assert os.readlink(d.config_path) == f"{d.service_dir}/current/api.toml"
        assert Path(d.config_path).read_text() == f"version = {v!r}\n"
        assert Path(d.unit_path).read_text() == f"[Unit]\nDescription={v}\n"
        assert not Path(d.unit_path + ".recon-tmp").exists() and not (Path(d.service_dir) / ".current.tmp").exists()
    assert _log(tmp_path) == ["daemon-reload", "daemon-reload"]


def test_switch_to_a_release_that_is_not_kept_changes_nothing(tmp_path: Path, sh) -> None:  # type: ignore[no-untyped-def]
    d = _svc(tmp_path)
    _releases(tmp_path, d, ["1.0"])
    assert sh(hs.switch_script(d, "1.0")).returncode == 0
    res = sh("set -e\n" + hs.switch_script(d, "9.9"))
    assert res.returncode == 3 and "release 9.9 is not on the host" in res.stderr
    assert os.readlink(Path(d.service_dir) / "current") == "releases/1.0"
    assert _log(tmp_path) == ["daemon-reload"]


def test_the_artifact_check_refuses_an_artifact_whose_sha256_differs(tmp_path: Path, sh) -> None:  # type: ignore[no-untyped-def]
    good = hashlib.sha256(b"binary 2.0\n").hexdigest()
    d = _svc(tmp_path, sha256="1" * 64)
    _releases(tmp_path, d, ["2.0"])
    check = hs.artifact_check(d) + " || { echo 'does not match sha256 " + d.sha256 + "' >&2; exit 4; }"
    res = sh(check)
    assert res.returncode == 4 and f"does not match sha256 {'1' * 64}" in res.stderr
    assert sh(check.replace("1" * 64, good)).returncode == 0


# --------------------------------------------------------------------------------------------- in-place files
def _files(d: DesiredService) -> list[Path]:
    return [Path(d.release_dir) / f"{d.service}.toml", Path(d.release_dir) / d.unit_name, Path(d.env_path)]


def test_keep_prev_then_restore_puts_the_earlier_files_back_and_keeps_the_newer(tmp_path: Path, sh) -> None:  # type: ignore[no-untyped-def]
    d = _svc(tmp_path)
    _releases(tmp_path, d, ["2.0"])
    env = Path(d.env_path)
    env.write_text('TOKEN="old"\n')
    env.chmod(0o600)
    Path(d.env_path + ".prev").write_text("stale, readable\n")
    Path(d.env_path + ".prev").chmod(0o644)
    assert sh(hs.keep_prev_script(d)).returncode == 0
    assert stat.S_IMODE(os.stat(d.env_path + ".prev").st_mode) == 0o600
    assert Path(d.env_path + ".prev").read_text() == 'TOKEN="old"\n'
    before = {p: p.read_text() for p in _files(d)}
    for p in _files(d):                       # the in-place apply writes new files
        p.write_text(p.read_text() + "# new\n")
    res = sh("set -e\n" + hs.restore_script(d, ".prev", keep=".undo"))
    assert res.returncode == 0, res.stderr
    assert {p: p.read_text() for p in _files(d)} == before
    assert all(Path(f"{p}.undo").read_text() == before[p] + "# new\n" for p in _files(d))
    assert not any(Path(f"{p}.prev").exists() for p in _files(d))
    assert stat.S_IMODE(os.stat(d.env_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d.env_path + ".undo").st_mode) == 0o600
    assert Path(d.unit_path).read_text() == before[Path(d.release_dir) / d.unit_name]
    assert _log(tmp_path) == ["daemon-reload"]
    assert sh(hs.drop_script(d, ".undo")).returncode == 0
    assert not any(Path(f"{p}.undo").exists() for p in _files(d))


def test_restore_with_nothing_kept_exits_3_and_installs_nothing(tmp_path: Path, sh) -> None:  # type: ignore[no-untyped-def]
    d = _svc(tmp_path)
    _releases(tmp_path, d, ["2.0"])
    res = sh("set -e\n" + hs.restore_script(d, ".prev"))
    assert res.returncode == 3 and "no earlier files are kept beside the running release" in res.stderr
    assert not Path(d.unit_path).exists() and _log(tmp_path) == []


def test_env_hash_is_the_observations_salted_fingerprint(tmp_path: Path, sh) -> None:  # type: ignore[no-untyped-def]
    d = _svc(tmp_path)
    assert sh(hs.env_hash_script(d.env_path, "salt")).stdout == ""      # no file: no output
    Path(d.env_path).parent.mkdir(parents=True)
    Path(d.env_path).write_text('T="v"\n')
    want = hashlib.sha256(b"salt\0" + b'T="v"\n').hexdigest()
    assert sh(hs.env_hash_script(d.env_path, "salt")).stdout.split()[0] == want


def test_staging_cleanup_removes_the_release_and_reports_free_space(tmp_path: Path, sh) -> None:  # type: ignore[no-untyped-def]
    d = _svc(tmp_path)
    _releases(tmp_path, d, ["2.0"])
    res = sh(hs.staging_cleanup_script(d.release_dir, remove=True))
    assert res.returncode == 0 and not Path(d.release_dir).exists()
    fields = res.stdout.split()
    assert len(fields) >= 6 and fields[3].isdigit()
    res = sh(hs.staging_cleanup_script(str(tmp_path / "no/such/dir"), remove=False))
    assert res.returncode == 0 and res.stdout.split()[3].isdigit()


# --------------------------------------------------------------------------------------------- bounce and check
def test_bounce_restarts_reloads_then_checks_every_service(tmp_path: Path, sh) -> None:  # type: ignore[no-untyped-def]
    a, b, c = _svc(tmp_path, "api"), _svc(tmp_path, "web"), _svc(tmp_path, "db", health_url=None)
    script = hs.bounce_script([(a, Effect.START), (b, Effect.RELOAD), (c, Effect.DAEMON_RELOAD)])
    res = sh(script)
    assert res.returncode == 0, res.stderr
    assert hs.parse_results(res.stdout) == {"api": (True, "HTTP 200 after 0s"), "web": (True, "HTTP 200 after 0s"),
                                            "db": (True, "active")}
    log = _log(tmp_path)
    assert log[:2] == ["restart --job-mode=ignore-requirements provisioning-api.service",
                       "reload provisioning-web.service"]
    assert sum(x.startswith("curl ") and "--noproxy *" in x for x in log) == 2


def test_bounce_of_one_service_has_no_enable_and_reports_a_failed_unit(tmp_path: Path, sh) -> None:  # type: ignore[no-untyped-def]
    d = _svc(tmp_path)
    res = sh(hs.bounce_script([(d, Effect.RESTART)]), DOWN=d.unit_name)
    assert hs.parse_results(res.stdout) == {"api": (False, "unit is failed dead exit-code")}
    assert _log(tmp_path)[0] == "restart --job-mode=ignore-requirements provisioning-api.service"
    assert not any(x.startswith("enable") for x in _log(tmp_path))


def test_health_check_that_never_answers_fails_after_its_timeout_with_probes(tmp_path: Path, sh) -> None:  # type: ignore[no-untyped-def]
    d = _svc(tmp_path, health_timeout_s=1.0, health_interval_s=0.2)
    res = sh(hs.bounce_script([(d, Effect.RELOAD)]), CODE="503")
    # the gate gives up once its 1 s have passed; the last probe may end in the second after (a loaded machine)
    assert hs.parse_results(res.stdout) in ({"api": (False, "HTTP 503 after 1s")},
                                            {"api": (False, "HTTP 503 after 2s")})
    assert any(line.startswith("PROBE\tapi\t503\t") for line in res.stdout.splitlines())
    assert hs.bounce_timeout([d, _svc(tmp_path, health_timeout_s=30.5)]) == 90


def test_bounce_lines_and_stop_are_quoted_and_never_fail_the_script(tmp_path: Path) -> None:
    d = _svc(tmp_path)
    assert hs.bounce_lines(["a.service"], ["b c.service"]) == [
        "systemctl restart --job-mode=ignore-requirements a.service 2>/dev/null || true",
        "systemctl reload 'b c.service' 2>/dev/null || true"]
    assert hs.bounce_lines() == []
    assert hs.stop_script(d) == "systemctl disable -q --now provisioning-api.service 2>/dev/null; true"
    assert hs.parse_results("RESULT\tapi\tok\tactive\nnoise\nRESULT\tbad\nPROBE\tapi\t000\t1\t5") == {
        "api": (True, "active")}


def test_read_back_scripts(tmp_path: Path, sh) -> None:  # type: ignore[no-untyped-def]
    d = _svc(tmp_path)
    _releases(tmp_path, d, ["2.0"])
    out = sh(hs.binary_sha_script(d, "2.0")).stdout.split()[0]
    assert out == hashlib.sha256(b"binary 2.0\n").hexdigest()
    assert sh(hs.read_script(str(Path(d.release_dir) / "api.toml"))).stdout == "version = '2.0'\n"
