"""Check that test hosts hold exactly what recon would install (after the pyinfra or Ansible equivalent ran).

    TESTHOSTS_DIR=/tmp/recon-bench TESTHOSTS_NET=127.0.30 TESTHOSTS_PREFIX=rbench \\
    BENCH_VAULT_TOKEN=... .venv/bin/python bench/equivalent/verify.py 1 2 ...   # host indexes

Run with recon's venv. For each host (reached with the harness's nsenter `exec`, not over SSH) and each
service it compares against recon's own `reconciler.desired` output for that host's address: sha256 of
the artifact, the release config, the unit (in the release and in /etc/systemd/system) and the
EnvironmentFile; the `current` and config symlinks; owner/group/mode of each file and directory; the
service account; unit enabled + active; and the /health answer (HTTP 200). Prints one line per host,
the differences if any; exit 1 on any difference. BENCH_RENDERED=DIR: the manifest of another spec
(render.py --out DIR), as for the equivalents themselves.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from reconciler.desired import desired_service  # noqa: E402
from reconciler.spec import load_spec  # noqa: E402
from testhosts import TestHosts  # noqa: E402

DEFAULT_SPECS = [str(REPO / "specs/platform.yaml"), str(REPO / "specs/overrides/local.yaml")]
RENDERED = Path(os.environ.get("BENCH_RENDERED", Path(__file__).with_name("rendered")))


def expected(spec, name: str, address: str, rendered: Path = RENDERED) -> dict:
    manifest = json.loads((rendered / "services.json").read_text())
    modes, user, group = manifest["modes"], manifest["user"], manifest["group"]
    out: dict[str, object] = {"user": f"{user}:{group}:{manifest['user_home']}:{manifest['user_shell']}"}
    for d in manifest["directories"]:
        out[f"stat {d['path']}"] = f"d {d['owner']}:{d['group']} {int(d['mode'], 8):o}"
    for svc in spec.services.values():
        host = dataclasses.replace(spec.hosts[svc.hosts[0]], name=name, address=address)
        d = desired_service(svc, host, lambda n, s: os.environ.get(f"BENCH_{n}", ""))
        cfg = f"{d.release_dir}/{svc.name}.toml"
        out[f"sha {d.binary_path}"] = d.sha256
        out[f"stat {d.binary_path}"] = f"f root:root {int(modes['binary'], 8):o}"
        out[f"sha {cfg}"] = d.config_sha
        out[f"stat {cfg}"] = f"f root:{group} {int(modes['config'], 8):o}"
        for unit in (d.unit_path, f"{d.release_dir}/{d.unit_name}"):
            out[f"sha {unit}"] = d.unit_sha
            out[f"stat {unit}"] = f"f root:root {int(modes['unit'], 8):o}"
        out[f"link {d.service_dir}/current"] = f"releases/{d.version}"
        out[f"link {d.config_path}"] = f"{d.service_dir}/current/{svc.name}.toml"
        if d.secret_names:
            out[f"sha {d.env_path}"] = hashlib.sha256(d.secrets_text.encode()).hexdigest()
            out[f"stat {d.env_path}"] = f"f root:root {int(modes['env'], 8):o}"
        out[f"unit {d.unit_name}"] = "enabled active"
        if d.health_url:
            out[f"health {d.health_url}"] = "200"
    return out


def probe_script(keys: list[str]) -> str:
    """One shell script printing `KEY<TAB>observed` for each key (and `user`)."""
    def line(key: str, cmd: str) -> str:
        return f"printf '%s\\t%s\\n' {shlex.quote(key)} \"$({cmd})\""

    lines = [line("user", "echo $(id -un provisioning):$(id -gn provisioning):"
                          "$(getent passwd provisioning | cut -d: -f6,7)")]
    for key in keys:
        kind, _, arg = key.partition(" ")
        q = shlex.quote(arg)
        cmd = {
            "sha": f"sha256sum {q} | cut -d' ' -f1",
            "stat": f"stat -c '%F %U:%G %a' {q} | sed 's/^directory/d/; s/^regular\\( empty\\)\\? file/f/'",
            "link": f"readlink {q}",
            "unit": f"echo $(systemctl is-enabled {q}) $(systemctl is-active {q})",
            "health": f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 {q}",
        }[kind]
        lines.append(line(key, f"{cmd} 2>/dev/null"))
    return "\n".join(lines) + "\n"


def check_host(hosts: TestHosts, spec, i: int, rendered: Path = RENDERED) -> list[str]:
    address = hosts.address(i)
    want = expected(spec, f"node{i}", address, rendered)
    keys = [k for k in want if k != "user"]
    r = hosts.exec(i, ["/bin/sh", "-c", probe_script(keys)])
    got: dict[str, str] = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition("\t")
        got[key] = value.strip()
    return [f"{key}: want {value!r}, got {got.get(key)!r}" for key, value in want.items()
            if got.get(key) != value]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hosts", nargs="+", type=int, help="test host indexes")
    ap.add_argument("-f", "--file", dest="files", action="append", help="spec file (repeatable)")
    args = ap.parse_args(argv)
    spec = load_spec(args.files or DEFAULT_SPECS)
    hosts = TestHosts()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: (i, check_host(hosts, spec, i)), args.hosts))
    bad = 0
    for i, problems in results:
        if problems:
            bad += 1
            print(f"host {i} ({hosts.address(i)}): {len(problems)} difference(s)")
            for p in problems:
                print(f"  {p}")
    print(f"verify: {len(results) - bad}/{len(results)} host(s) match recon's desired state")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
