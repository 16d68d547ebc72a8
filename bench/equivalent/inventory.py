"""pyinfra inventory for the benchmark hosts, from environment variables.

    BENCH_HOSTS=127.0.30.1,127.0.30.2     addresses (required); host I is `node{I}` in recon's terms
    BENCH_KEY=/tmp/recon-bench/id_ed25519  SSH private key (required)
    BENCH_KNOWN_HOSTS=/tmp/recon-bench/known_hosts   host keys, checked strictly (required)
    BENCH_SSH_USER=root  BENCH_SSH_PORT=22              (optional)

    bench/.venv/bin/pyinfra bench/equivalent/inventory.py bench/equivalent/deploy.py [--dry]

Host keys are never accepted blindly: `ssh_strict_host_key_checking=yes` with BENCH_KNOWN_HOSTS.
"""

import os


def _require(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"set {name} (see bench/equivalent/inventory.py)")
    return value


_addresses = [a.strip() for a in _require("BENCH_HOSTS").split(",") if a.strip()]
_known_hosts = _require("BENCH_KNOWN_HOSTS")
if not os.path.isfile(_known_hosts):
    raise RuntimeError(f"BENCH_KNOWN_HOSTS={_known_hosts} does not exist")
_common = {
    "ssh_user": os.environ.get("BENCH_SSH_USER", "root"),
    "ssh_port": int(os.environ.get("BENCH_SSH_PORT", "22")),
    "ssh_key": _require("BENCH_KEY"),
    "ssh_known_hosts_file": _known_hosts,
    "ssh_strict_host_key_checking": "yes",
}

# The group pyinfra sees (every module-level list is a group; `_`-names are ignored).
bench = [
    (address, {**_common, "bench_address": address, "bench_host": f"node{i}"})
    for i, address in enumerate(_addresses, start=1)
]
