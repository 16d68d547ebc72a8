"""recon's own pyinfra operations (`reconciler/operations.py`), tested the way pyinfra tests its operations:
arguments and observed state in, the exact commands out, as data files (`tests/operations/*.json`; rewrite
them with `RECON_REGEN_OPERATIONS=1` after a deliberate change and review the diff). Then the place command
itself, run by /bin/sh on this machine against a tree in tmp_path (as root; `getent` and `systemctl`
stand-ins on PATH), for what text alone cannot show: final modes, the env file's bytes, refusals."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from reconciler import operations as ops
from reconciler.desired import DesiredService
from reconciler.plan import Effect

DATA = Path(__file__).parent / "operations"
REGEN = os.environ.get("RECON_REGEN_OPERATIONS") == "1"


def _svc(name: str, root: str = "", **fields: Any) -> DesiredService:
    version = fields.pop("version", "2.0")
    sd = f"{root}/opt/provisioning/{name}"
    values: dict[str, Any] = dict(
        host="n1", service=name, version=version, sha256=hashlib.sha256(f"{name} {version}\n".encode()).hexdigest(),
        unit_name=f"provisioning-{name}.service", unit_path=f"{root}/etc/systemd/system/provisioning-{name}.service",
        unit_text=f"[Unit]\nDescription={name}\n", config_path=f"{root}/etc/provisioning/{name}.toml",
        config_text="a = 1\n", env_path=f"{root}/etc/provisioning/{name}.env", service_dir=sd,
        release_dir=f"{sd}/releases/{version}", binary_path=f"{sd}/releases/{version}/{name}",
        data_dir=f"{root}/var/lib/provisioning/{name}", user=f"prov-{name}", group=f"prov-{name}", depends_on=(),
        health_url=f"http://127.0.0.1:8080/{name}", health_timeout_s=5.0, health_interval_s=0.5, health_status=200,
        reload_signal=None, keep_releases=2, config={}, secret_names=())
    values.update(fields)
    return DesiredService(**values)


def _item(spec: dict[str, Any], root: str = "") -> ops.WaveItem:
    fields = dict(spec.get("desired", {}))
    if "secret_names" in fields:
        fields["secret_names"] = tuple(fields["secret_names"])
    d = _svc(spec["service"], root, **fields)
    return ops.WaveItem(d, Effect(spec.get("effect", "start")), release=spec.get("release", False),
                        files=spec.get("files", False), in_place=spec.get("in_place", False),
                        new_release=spec.get("new_release", False), mine=frozenset(spec.get("mine", [])),
                        dropins=tuple(spec.get("dropins", [])), keep=frozenset(spec.get("keep", [d.version])),
                        prune=spec.get("prune", True),
                        artifact=_archive(spec["archive"]) if "archive" in spec else spec.get("artifact", "").encode())


def _archive(files: dict[str, str]) -> bytes:
    """A .tar.gz of `files` (path → text; `bin/*` executable), the same bytes every time."""
    import gzip

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, text in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(text.encode()), 0o755 if path.startswith("bin/") else 0o644, 0
            tar.addfile(info, io.BytesIO(text.encode()))
    return gzip.compress(raw.getvalue(), mtime=0)


def _as_data(cmd: Any) -> dict[str, Any]:
    if hasattr(cmd, "dest"):          # FileUploadCommand: where, and what the tar holds
        with tarfile.open(fileobj=io.BytesIO(cmd.src.getvalue())) as tar:
            members = [[m.name, oct(m.mode), hashlib.sha256(tar.extractfile(m).read()).hexdigest()]  # type: ignore[union-attr]
                       for m in tar.getmembers()]
        return {"upload": cmd.dest, "members": members}
    return {"shell": cmd.get_raw_value().splitlines()}


def _commands(case: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    items = [_item(s) for s in case["wave"]]
    token = case.get("token", "t0")
    members = ops.upload_members(items)
    op = case["operation"]
    if op == "upload_wave":
        gen = ops.upload_wave._inner(members, token)
    elif op == "place_wave":
        gen = ops.place_wave._inner(items, token, members)
    else:
        gen = ops.start_wave._inner(items)
    return [_as_data(c) for c in gen], ops.secrets_stdin(items) if op == "place_wave" else ""


CASES = sorted(DATA.glob("*.json"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_operation_yields_exactly_the_commands_of_its_data_file(path: Path) -> None:
    case = json.loads(path.read_text())
    commands, stdin = _commands(case)
    if REGEN:
        case["commands"], case["stdin"] = commands, stdin
        path.write_text(json.dumps(case, indent=1) + "\n")
    assert commands == case["commands"]
    assert stdin == case.get("stdin", "")


def test_there_is_a_data_file_for_each_operation_and_the_round_trips_are_three_at_most() -> None:
    cases = [json.loads(p.read_text()) for p in CASES]
    assert {c["operation"] for c in cases} == {"upload_wave", "place_wave", "start_wave"}
    for c in cases:
        assert len(c["commands"]) <= 1, c["operation"]    # one command per operation: three per wave


def test_nothing_secret_goes_into_the_upload_or_onto_a_command_line() -> None:
    it = _item({"service": "api", "release": True, "files": True, "artifact": "api 2.0\n",
                "desired": {"secret_names": ["TOKEN"], "secrets_text": 'TOKEN="s3cr3t-value"\n'}})
    members = ops.upload_members([it])
    assert all(b"s3cr3t" not in data for _, data, _ in members)
    assert "s3cr3t" not in ops.place_script([it], "t0", members)
    assert "s3cr3t" not in ops.secrets_stdin([it]) and ops.secrets_stdin([it]).endswith("\n.\n")


# ------------------------------------------------------------------------------- the place command, run
GETENT = """#!/bin/sh
case "$1 $2" in
  "passwd root") echo 'root:x:0:0:root:/root:/bin/bash';;
  "group root") echo 'root:x:0:';;
  "passwd login") echo 'login:x:1000:1000::/home/login:/bin/bash';;
  passwd*) echo "$2:x:990:65534::/nonexistent:/usr/sbin/nologin";;
  group*) echo "$2:x:65534:";;
esac
"""
SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$LOG"
"""


@pytest.fixture
def place(tmp_path: Path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.fail("the place command sets owners: run the tests as root (CI does)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("getent", GETENT), ("systemctl", SYSTEMCTL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    root = str(tmp_path / "host")
    Path(root, "etc/systemd/system").mkdir(parents=True)     # there on every systemd host

    def run(items: list[ops.WaveItem], tamper: bool = False
            ) -> tuple[subprocess.CompletedProcess[str], ops.PlaceResult]:
        token = hashlib.sha256(root.encode()).hexdigest()[:12]
        members = ops.upload_members(items)
        up = Path(ops.upload_dest(token))
        up.write_bytes(ops.upload_tar([(n, b"tampered\n" if tamper else d, m) for n, d, m in members]))
        env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "LOG": str(tmp_path / "log")}
        res = subprocess.run(["/bin/sh", "-c", ops.place_script(items, token, members)],
                             input=ops.secrets_stdin(items), capture_output=True, text=True, timeout=60, env=env)
        assert not up.exists(), "the upload is removed in any case"
        assert not list(Path(ops.STAGE_DIR).glob(f"recon-wave-{token}.*")), "the staging directory is removed"
        return res, ops.parse_place(res.stdout + res.stderr)

    run.root = root  # type: ignore[attr-defined]
    run.log = tmp_path / "log"  # type: ignore[attr-defined]
    return run


def _wave(root: str, secret: str = 'TOKEN="a b\\"c $x"\n', **extra: Any) -> list[ops.WaveItem]:
    out = []
    for name in ("api", "web"):
        fields = {"user": "nobody", "group": "nogroup", **extra.get(name, {})}   # real on Debian; getent says system
        d = _svc(name, root, secret_names=("TOKEN",) if name == "api" else (),
                 secrets_text=secret if name == "api" else "", **fields)
        out.append(ops.WaveItem(d, Effect.START, release=True, files=True, new_release=True,
                                artifact=f"{name} 2.0\n".encode(), keep=frozenset({"2.0"})))
    return out


def _mode(p: str) -> str:
    st = os.stat(p)
    return f"{stat.S_IMODE(st.st_mode):o} {st.st_uid}:{st.st_gid}"


def test_place_puts_every_file_with_its_owner_and_mode_switches_and_reloads_once(place) -> None:  # type: ignore[no-untyped-def]
    items = _wave(place.root)
    res, pr = place(items)
    assert res.returncode == 0, res.stderr
    assert pr.switched == {"api", "web"} and pr.reloaded and not pr.errors, res.stdout
    api = items[0].d
    assert Path(api.binary_path).read_bytes() == b"api 2.0\n" and _mode(api.binary_path) == "755 0:0"
    assert _mode(f"{api.release_dir}/api.toml") == "640 0:65534"
    assert Path(f"{api.release_dir}/api.toml").read_text() == api.config_text
    assert Path(api.env_path).read_bytes() == api.secrets_text.encode() and _mode(api.env_path) == "600 0:0"
    assert os.readlink(f"{api.service_dir}/current") == "releases/2.0"
    assert Path(api.unit_path).read_text() == api.unit_text
    # enabled without a reload of its own; the one daemon-reload loads units and enablement together
    assert place.log.read_text().splitlines() == ["enable --no-reload -q provisioning-api.service "
                                                  "provisioning-web.service", "daemon-reload"]
    assert ("dir", api.service_dir) in pr.created["api"]
    assert not [p for p in Path(api.release_dir).iterdir() if "recon-tmp" in p.name]


def test_place_refuses_one_service_and_still_switches_the_other(place) -> None:  # type: ignore[no-untyped-def]
    items = _wave(place.root, api={"user": "login"})
    res, pr = place(items)
    assert res.returncode == 0, res.stderr          # one service refused is not the command failing
    assert pr.switched == {"web"} and "api" not in pr.staged and pr.reloaded
    assert any("is not a system account" in e for e in pr.errors["api"]), pr.errors
    assert not Path(items[0].d.release_dir).exists()       # the new release it began is removed
    assert not os.path.lexists(f"{items[0].d.service_dir}/current")
    assert pr.df.get("api", "").split()[-1].startswith("/")     # the df line of its release directory
    assert place.log.read_text().splitlines() == ["enable --no-reload -q provisioning-web.service", "daemon-reload"]


def test_place_enables_only_the_services_that_run(place) -> None:  # type: ignore[no-untyped-def]
    res, pr = place(_wave(place.root, web={"run": "stopped"}))     # deployed, not started: the start disables it
    assert res.returncode == 0 and pr.switched == {"api", "web"}, res.stderr
    assert place.log.read_text().splitlines() == ["enable --no-reload -q provisioning-api.service", "daemon-reload"]


def test_a_tampered_upload_places_nothing(place) -> None:  # type: ignore[no-untyped-def]
    items = _wave(place.root)
    res, pr = place(items, tamper=True)
    assert res.returncode == 4 and "does not match its sha256s" in res.stderr
    assert not pr.staged and not pr.switched and not Path(place.root, "opt").exists()


def test_the_env_file_arrives_byte_exact_and_is_never_readable_by_others(place) -> None:  # type: ignore[no-untyped-def]
    secret = 'TOKEN="\\u00e9 \t tabs, quotes \' \\" and $dollar"\nOTHER=\n'
    items = _wave(place.root, secret=secret)
    res, _ = place(items)
    assert res.returncode == 0, res.stderr
    env = items[0].d.env_path
    assert Path(env).read_bytes() == secret.encode() and _mode(env) == "600 0:0"
    assert sorted(os.listdir(Path(env).parent)) == ["api.env", "api.toml", "web.toml"]
