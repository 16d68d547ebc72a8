#!/usr/bin/env bash
# The recon demo: boot a throwaway local systemd host (systemd-nspawn, reached over real SSH at
# 127.0.20.1), then validate, plan and apply the nine-service platform to it, show that a second
# plan is empty, and print its status. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DEMO=/tmp/recon-demo
HOSTS=(.venv/bin/python -m reconciler.testhosts --dir "$DEMO" --net 127.0.20 --prefix rdemo)
SPEC=(-f specs/platform.yaml -f specs/overrides/local.yaml)
STATE=(--state "$DEMO/state")
export VAULT_TOKEN="${VAULT_TOKEN:-demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}"
recon() { echo; echo "\$ recon $*"; .venv/bin/recon "$@"; }

"${HOSTS[@]}" down >/dev/null 2>&1 || true
rm -rf "$DEMO/state"
"${HOSTS[@]}" up 1
recon validate "${SPEC[@]}"
recon plan "${SPEC[@]}" "${STATE[@]}"
recon apply "${SPEC[@]}" "${STATE[@]}" --auto-approve
recon plan "${SPEC[@]}" "${STATE[@]}" --detailed-exitcode
recon status "${SPEC[@]}" "${STATE[@]}"
echo
echo "The demo host keeps running. Try: .venv/bin/recon plan ${SPEC[*]} ${STATE[*]}"
echo "Tear it down with: ${HOSTS[*]} down"
