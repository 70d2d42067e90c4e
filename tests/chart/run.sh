#!/usr/bin/env bash
# Chart tests: renders charts/argocd-gateway with the real Helm engine and validates every
# manifest against the Kubernetes schemas. Creates (or reuses) a venv at target/chart-venv;
# needs only python3 and PyPI. Extra arguments go to pytest (e.g. -k ha, or UPDATE_GOLDEN=1).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/target/chart-venv"

# shellcheck source=../venv.sh
source "$root/tests/venv.sh"
ensure_venv "$venv" "$root/tests/chart/requirements.txt"

cd "$root"
exec "$venv/bin/python" -m pytest tests/chart "$@"
