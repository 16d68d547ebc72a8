"""The observation script's `pack` block: its parts go out through one `base64`, cut apart at a random
mark that no file on the host can know; a file holding something that looks like a part stays whole."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.observe import PROTOCOL, ObserveError, Target, build_script, parse_output


def _target(tmp_path: Path, config: bytes) -> Target:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "a.toml").write_bytes(config)
    return Target("a", str(tmp_path / "opt/a"), str(etc / "a.toml"), "provisioning-recon-test-none.service",
                  str(etc / "a.env"))


def test_a_file_that_mimics_the_pack_framing_is_read_whole(tmp_path: Path) -> None:
    # the config holds a made-up mark and part header, and one with the real mark of *another* run
    other = "0" * 32
    config = f"x = 1\n\n{other} users\nroot:x:0:0::/root:/bin/sh\n\nsizes\n".encode() + b"\x00\xff end"
    t = _target(tmp_path, config)
    res = subprocess.run(["/bin/sh", "-c", build_script([t], "salt")], capture_output=True, timeout=30, check=True)
    out = res.stdout.decode()
    assert [line.split("\t")[0] for line in out.splitlines()] == ["protocol", "pack", "end"], out
    obs = parse_output("n", out, [t])
    assert obs.services["a"].config_text == config.decode("utf-8", "replace")
    assert "root" not in obs.accounts


def test_the_script_starts_one_base64_for_all_its_parts(tmp_path: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is needed for this test (scripts/setup.sh installs it)")
    t = _target(tmp_path, b"x = 1\n")
    log = tmp_path / "strace.log"
    subprocess.run([strace, "-f", "-qq", "-e", "trace=execve", "-o", str(log), "/bin/sh", "-c",
                    build_script([t] * 5, "salt")], capture_output=True, timeout=60, check=True)
    # the PATH search's misses end `= -1 ENOENT`; a call cut by another process's line ends `<unfinished ...>`
    execs = [line.split('"')[1] for line in log.read_text().splitlines() if 'execve("' in line and "= -1" not in line]
    assert sum(p.endswith("/base64") for p in execs) == 1, execs


def _answer(pack: bytes) -> str:
    def line(key: str, data: bytes) -> str:
        return f"{key}\t-\t{base64.b64encode(data).decode()}"

    return "\n".join([line("protocol", PROTOCOL.encode()), line("pack", pack), line("end", b"ok")]) + "\n"


def test_a_pack_is_cut_at_its_mark_and_refused_without_one() -> None:
    t = [Target("a", "/opt/a", "/etc/a.toml", "provisioning-a.service", "/etc/a.env")]
    mark = "ab" * 16
    pack = (f"{mark}\n\n{mark} meta\ncurrent\ta\t1.0\n\n{mark} sizes\n4 /etc/a.toml\n\n{mark} files\n".encode()
            + b"a\nb\n" + f"\n{mark} users\nprovisioning:x:1:1::/:/bin/false\n".encode())
    obs = parse_output("n", _answer(pack), t)
    assert (obs.services["a"].current, obs.services["a"].config_text) == ("1.0", "a\nb\n")
    assert set(obs.accounts) == {"provisioning"}
    with pytest.raises(ObserveError, match="mark"):
        parse_output("n", _answer(b"not a mark\n\nx meta\n"), t)
