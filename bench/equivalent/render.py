"""Pre-render what recon would install, for the pyinfra and Ansible equivalents.

    .venv/bin/python bench/equivalent/render.py [-f SPEC]... [--out bench/equivalent/rendered]

Run with recon's venv (it uses recon's own spec loader and `reconciler.desired` renderers), once per
spec change; the equivalents then need neither recon nor its venv. Default spec: specs/platform.yaml
+ specs/overrides/local.yaml. Writes into OUT:

  services.json          the manifest both equivalents read: user/group, directories, and per
                         service (in dependency order) version, artifact, paths, secrets (names and
                         the controller env var to read each from), health URL
  {service}.toml.j2      the config recon renders, as a Jinja2 template: the host-specific parts
                         (`{address}`, `{host}` in the spec) become `{{ bench_address }}` /
                         `{{ bench_host }}`; rendered with a host's address it is byte-identical
                         to recon's file for that host
  {unit_name}            the systemd unit recon renders (host-independent; checked); installed
                         in the release directory and copied to /etc/systemd/system

Secrets are never rendered: the manifest names them, each equivalent reads `BENCH_{NAME}` from its
own environment at run time (VAULT_TOKEN -> BENCH_VAULT_TOKEN).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from reconciler.desired import desired_service  # noqa: E402
from reconciler.spec import load_spec  # noqa: E402
from reconciler.waves import waves  # noqa: E402

DEFAULT_SPECS = ["specs/platform.yaml", "specs/overrides/local.yaml"]
ADDRESS_SENTINEL = "@@BENCH_ADDRESS@@"
HOST_SENTINEL = "@@BENCH_HOST@@"
JINJA = {ADDRESS_SENTINEL: "{{ bench_address }}", HOST_SENTINEL: "{{ bench_host }}"}
JINJA_DELIMITERS = ("{{", "}}", "{%", "%}", "{#", "#}")

# How recon's files are owned (mirrors recon's apply; keep in step with it).
USER_HOME = "/nonexistent"
USER_SHELL = "/usr/sbin/nologin"
DIR_MODE = "0755"
DATA_DIR_MODE = "0750"
BINARY_MODE = "0755"
CONFIG_MODE = "0640"       # root:{group}: the service reads it, cannot change it
UNIT_MODE = "0644"
ENV_MODE = "0600"          # root only: systemd reads EnvironmentFile= as root


def to_jinja(text: str) -> str:
    """`text` with the sentinels turned into Jinja2 variables and everything else kept literal."""
    out = []
    pos = 0
    while pos < len(text):
        hits = [(text.find(s, pos), s) for s in JINJA if text.find(s, pos) >= 0]
        nxt, sentinel = min(hits) if hits else (len(text), None)
        literal = text[pos:nxt]
        if any(d in literal for d in JINJA_DELIMITERS):
            literal = "{% raw %}" + literal + "{% endraw %}"
        out.append(literal)
        if sentinel is None:
            break
        out.append(JINJA[sentinel])
        pos = nxt + len(sentinel)
    return "".join(out)


def repo_relative(path: Path) -> str:
    path = path.resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def render(spec_files: list[str], out: Path) -> dict:
    spec = load_spec(spec_files)
    order = [name for wave in waves(spec) for name in wave]
    wave_of = {name: i for i, wave in enumerate(waves(spec)) for name in wave}
    out.mkdir(parents=True, exist_ok=True)

    users = {(s.user, s.group) for s in spec.services.values()}
    if len(users) != 1:
        raise SystemExit(f"render.py handles one service account, the spec has {sorted(users)}")
    (user, group), = users

    services = []
    directories: dict[str, dict] = {}

    def directory(path: str, owner: str = "root", grp: str = "root", mode: str = DIR_MODE) -> None:
        directories.setdefault(path, {"path": path, "owner": owner, "group": grp, "mode": mode})

    for name in order:
        svc = spec.services[name]
        host = spec.hosts[svc.hosts[0]]
        fake = dataclasses.replace(host, name=HOST_SENTINEL, address=ADDRESS_SENTINEL)
        d = desired_service(svc, fake, lambda n, s: f"@@SECRET_{n}@@")
        real = desired_service(svc, host, lambda n, s: "")
        if d.unit_text != real.unit_text or any(s in d.unit_text for s in JINJA):
            raise SystemExit(f"{name}: the unit depends on the host; render.py expects it not to")
        if svc.artifact_path is None:
            raise SystemExit(f"{name}: only local artifacts (artifact.path) are supported")
        artifact = Path(svc.artifact_path)
        if not artifact.is_file():
            raise SystemExit(f"{name}: artifact {artifact} missing: build it first "
                             "(.venv/bin/python -m reconciler.standin.build --out artifacts)")
        if sha256_file(artifact) != svc.sha256:
            raise SystemExit(f"{name}: artifact {artifact} does not match the spec's sha256")

        config_j2 = f"{name}.toml.j2"
        (out / config_j2).write_text(to_jinja(d.config_text))
        (out / d.unit_name).write_text(d.unit_text)

        config_dir = os.path.dirname(d.config_path)
        directory(config_dir)
        directory(os.path.dirname(d.service_dir))          # {install_dir}
        directory(d.service_dir)
        directory(f"{d.service_dir}/releases")
        directory(d.release_dir)
        directory(os.path.dirname(d.data_dir))
        directory(d.data_dir, user, group, DATA_DIR_MODE)

        services.append({
            "name": name,
            "version": d.version,
            "wave": wave_of[name],
            "depends_on": list(d.depends_on),
            "artifact": repo_relative(artifact),
            "sha256": d.sha256,
            "service_dir": d.service_dir,
            "release_dir": d.release_dir,
            "release_link": f"releases/{d.version}",       # `current` -> this (relative)
            "current": f"{d.service_dir}/current",
            "binary_path": d.binary_path,
            "config_template": config_j2,
            "config_release_path": f"{d.release_dir}/{name}.toml",
            "config_path": d.config_path,                      # a symlink to config_link_target
            "config_link_target": f"{d.service_dir}/current/{name}.toml",
            "unit_name": d.unit_name,
            "unit_file": d.unit_name,
            "unit_release_path": f"{d.release_dir}/{d.unit_name}",   # kept with the release
            "unit_path": d.unit_path,
            "env_path": d.env_path if d.secret_names else None,
            "secrets": [{"name": n, "env": f"BENCH_{n}"} for n in d.secret_names],
            "data_dir": d.data_dir,
            "health_url": to_jinja(d.health_url) if d.health_url else None,
            "health_timeout_s": d.health_timeout_s,
        })

    manifest = {
        "generated_by": "bench/equivalent/render.py",
        "spec_files": [repo_relative(Path(f)) for f in spec_files],
        "user": user,
        "group": group,
        "user_home": USER_HOME,
        "user_shell": USER_SHELL,
        "modes": {"binary": BINARY_MODE, "config": CONFIG_MODE, "unit": UNIT_MODE, "env": ENV_MODE},
        "directories": list(directories.values()),
        "services": services,
    }
    (out / "services.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-f", "--file", dest="files", action="append", help="spec file (repeatable)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("rendered")))
    args = ap.parse_args(argv)
    files = args.files or [str(REPO / f) for f in DEFAULT_SPECS]
    m = render(files, Path(args.out))
    print(f"rendered {len(m['services'])} services from {' + '.join(files)} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
