#!/usr/bin/env bash
# Chart tests: renders charts/argocd-gateway with the real Helm engine and validates every
# manifest against the Kubernetes schemas. Creates (or reuses) a venv at target/chart-venv
# (tests/chart/venv.sh); needs only python3 and PyPI. Extra arguments go to pytest (e.g. -k ha,
# or UPDATE_GOLDEN=1).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="$(bash "$root/tests/chart/venv.sh")"

cd "$root"
exec "$python" -m pytest tests/chart "$@"
