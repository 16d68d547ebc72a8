"""The pyinfra equivalent of `recon apply` for the nine-service platform (benchmark comparison).

    export BENCH_HOSTS=127.0.30.1 BENCH_KEY=... BENCH_KNOWN_HOSTS=... BENCH_VAULT_TOKEN=...
    bench/.venv/bin/pyinfra -y bench/equivalent/inventory.py bench/equivalent/deploy.py   # apply
    bench/.venv/bin/pyinfra bench/equivalent/inventory.py bench/equivalent/deploy.py --dry

Reads bench/equivalent/rendered/ (made by render.py from recon's spec: the manifest services.json,
the config templates and the units) and the artifacts under the repository's artifacts/. Does per
host what recon's apply does: service account, directories, release (artifact + config), `current`
and config symlinks, secrets EnvironmentFile, unit, daemon-reload, enable + start in dependency
order, health check after a (re)start. Idiomatic pyinfra: ops are planned against live facts, and
the "restart if something changed" and "daemon-reload if a unit changed" decisions use each op's
`will_change` at plan time, so a converged `--dry` shows no changes at all.

Environment: BENCH_<SECRET> for each secret (BENCH_VAULT_TOKEN), BENCH_ARTIFACTS (default: the
repository's artifacts/), BENCH_RENDERED (default: rendered/ beside this file),
BENCH_PYINFRA_NODELAY=1 to set TCP_NODELAY on the SSH sockets (off by default: stock pyinfra),
BENCH_NO_HEALTH=1 to leave out the health checks (bench/chain.py: a plain deploy, no health gate).
"""

import io
import json
import os
import shlex
import socket
from pathlib import Path

from pyinfra import host
from pyinfra.operations import files, server, systemd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RENDERED = Path(os.environ.get("BENCH_RENDERED", HERE / "rendered"))
ARTIFACTS_BASE = Path(os.environ["BENCH_ARTIFACTS"]) if os.environ.get("BENCH_ARTIFACTS") else None
manifest = json.loads((RENDERED / "services.json").read_text())
services = manifest["services"]
modes = manifest["modes"]
user, group = manifest["user"], manifest["group"]
address = host.data.get("bench_address") or host.name
host_vars = {"bench_address": address, "bench_host": host.data.get("bench_host") or host.name}

if os.environ.get("BENCH_PYINFRA_NODELAY") == "1":
    # pyinfra (paramiko) leaves Nagle on: ~45 ms per remote command. Opt-in only.
    sock = host.connector.client.get_transport().sock
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def artifact_path(svc: dict) -> str:
    if ARTIFACTS_BASE is not None:
        return str(ARTIFACTS_BASE / Path(svc["artifact"]).name)
    return str(REPO / svc["artifact"])


def secrets_text(svc: dict) -> bytes:
    """The EnvironmentFile, as recon writes it (`reconciler.desired.env_file_line`): NAME="value" lines,
    with \\ " $ ` escaped by a backslash (systemd reads the value back byte for byte)."""
    lines = []
    for secret in svc["secrets"]:
        value = os.environ.get(secret["env"])
        if not value:
            raise RuntimeError(f"set {secret['env']} (secret {secret['name']} of {svc['name']})")
        escaped = "".join("\\" + ch if ch in '\\"$`' else ch for ch in value)
        lines.append(f'{secret["name"]}="{escaped}"\n')
    return "".join(lines).encode()


def jinja(text: str) -> str:
    for key, value in host_vars.items():
        text = text.replace("{{ " + key + " }}", value)
    return text


server.group(name=f"Group {group}", group=group, system=True)
server.user(
    name=f"User {user}", user=user, group=group, system=True,
    home=manifest["user_home"], shell=manifest["user_shell"], create_home=False, ensure_home=False,
)

for d in manifest["directories"]:
    files.directory(name=f"Directory {d['path']}", path=d["path"], user=d["owner"], group=d["group"],
                    mode=d["mode"])

changed_files: dict[str, list] = {}
unit_ops = []
for svc in services:
    name = svc["name"]
    ops = [
        files.put(name=f"{name}: artifact", src=artifact_path(svc), dest=svc["binary_path"],
                  user="root", group="root", mode=modes["binary"]),
        files.template(name=f"{name}: config", src=str(RENDERED / svc["config_template"]),
                       dest=svc["config_release_path"], user="root", group=group,
                       mode=modes["config"], **host_vars),
        files.link(name=f"{name}: current -> {svc['release_link']}", path=svc["current"],
                   target=svc["release_link"]),
        files.link(name=f"{name}: {svc['config_path']}", path=svc["config_path"],
                   target=svc["config_link_target"]),
    ]
    if svc["env_path"]:
        ops.append(files.put(name=f"{name}: secrets", src=io.BytesIO(secrets_text(svc)),
                             dest=svc["env_path"], user="root", group="root", mode=modes["env"]))
    ops.append(files.put(name=f"{name}: unit (release)", src=str(RENDERED / svc["unit_file"]),
                         dest=svc["unit_release_path"], user="root", group="root", mode=modes["unit"]))
    unit = files.put(name=f"{name}: unit", src=str(RENDERED / svc["unit_file"]), dest=svc["unit_path"],
                     user="root", group="root", mode=modes["unit"])
    ops.append(unit)
    unit_ops.append(unit)
    changed_files[name] = ops

if any(op.will_change for op in unit_ops):
    systemd.daemon_reload(name="systemd daemon-reload")

started = {}
for svc in services:  # dependency order
    name = svc["name"]
    started[name] = systemd.service(
        name=f"{name}: enabled, running", service=svc["unit_name"], running=True, enabled=True,
        restarted=any(op.will_change for op in changed_files[name]),
    )

health_checks = os.environ.get("BENCH_NO_HEALTH") != "1"
for svc in services:
    if health_checks and svc["health_url"] and started[svc["name"]].will_change:
        url = jinja(svc["health_url"])
        tries = max(1, int(svc["health_timeout_s"]))
        server.shell(
            name=f"{svc['name']}: health {url}",
            commands=[f"curl -fsS -o /dev/null --max-time 2 --retry {tries} --retry-delay 1 "
                      f"--retry-all-errors {shlex.quote(url)}"],
        )
