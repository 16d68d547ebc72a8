#!/usr/bin/env bash
# Create bench/.venv with the comparison tools: pyinfra (same major version as recon's, 3.x) and
# ansible-core, both from PyPI. Idempotent and quiet: a second run only checks the versions.
# Installs nothing system-wide.
#
#   bench/setup.sh            # create or check bench/.venv
#   BENCH_PYTHON=python3.11 bench/setup.sh
#
# Versions are pinned so measurements stay comparable; override with BENCH_PYINFRA_SPEC /
# BENCH_ANSIBLE_SPEC (pip requirement strings). ansible-core 2.19 is the newest line that runs on a
# Python 3.11 controller (2.20 needs 3.12).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${BENCH_PYTHON:-python3}"
pyinfra_spec="${BENCH_PYINFRA_SPEC:-pyinfra==3.10.0}"
ansible_spec="${BENCH_ANSIBLE_SPEC:-ansible-core==2.19.14}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi

# Already satisfied? Then do nothing (fast path, no network).
if "$venv/bin/python" - "$pyinfra_spec" "$ansible_spec" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    if not req.specifier.contains(version(req.name), prereleases=True):
        sys.exit(1)
EOF
    exit 0
fi

# (this machine's pip config names optional local indexes; pip warns when one is absent: drop that)
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$pyinfra_spec" "$ansible_spec" \
    2> >(grep -v "^WARNING: Location 'file:" >&2)
"$venv/bin/python" - <<'EOF'
from importlib.metadata import version
print(f"bench/.venv: pyinfra {version('pyinfra')}, ansible-core {version('ansible-core')}")
EOF
