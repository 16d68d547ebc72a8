#!/usr/bin/env python3
"""Ansible inventory for the benchmark hosts, from the same environment variables as inventory.py.

    BENCH_HOSTS=127.0.30.1,127.0.30.2 BENCH_KEY=... BENCH_KNOWN_HOSTS=... [BENCH_SSH_USER=root BENCH_SSH_PORT=22]

    bench/equivalent/ansible_inventory.py --write /tmp/recon-bench/inventory.yml   # static file (benchmarks)
    ansible-playbook -i bench/equivalent/ansible_inventory.py ...                # or as a dynamic inventory

Host I is `node{I}` (ansible_host = its address). SSH: root, the generated key, strict host key
checking against BENCH_KNOWN_HOSTS (ansible_ssh_common_args), Python 3 on the target.
"""

import argparse
import json
import os
import sys


def _require(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        sys.exit(f"set {name} (see {__file__})")
    return value


def inventory() -> dict:
    addresses = [a.strip() for a in _require("BENCH_HOSTS").split(",") if a.strip()]
    key, known_hosts = _require("BENCH_KEY"), _require("BENCH_KNOWN_HOSTS")
    if not os.path.isfile(known_hosts):
        sys.exit(f"BENCH_KNOWN_HOSTS={known_hosts} does not exist")
    hostvars = {
        f"node{i}": {"ansible_host": a, "bench_address": a, "bench_host": f"node{i}"}
        for i, a in enumerate(addresses, start=1)
    }
    common = {
        "ansible_user": os.environ.get("BENCH_SSH_USER", "root"),
        "ansible_port": int(os.environ.get("BENCH_SSH_PORT", "22")),
        "ansible_ssh_private_key_file": key,
        "ansible_ssh_common_args": f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts}",
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    return {"all": {"hosts": hostvars, "vars": common}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="dynamic inventory: print all hosts (JSON)")
    ap.add_argument("--host", help="dynamic inventory: vars of one host (all are in --list _meta)")
    ap.add_argument("--write", metavar="FILE", help="write a static YAML inventory to FILE")
    args = ap.parse_args()
    inv = inventory()
    if args.write:
        # JSON is YAML: a .yml file the yaml inventory plugin reads, no PyYAML needed here.
        with open(args.write, "w") as f:
            json.dump(inv, f, indent=2)
            f.write("\n")
    elif args.host:
        print("{}")
    else:
        hosts = inv["all"]["hosts"]
        print(json.dumps({
            "all": {"hosts": sorted(hosts), "vars": inv["all"]["vars"]},
            "_meta": {"hostvars": hosts},
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
