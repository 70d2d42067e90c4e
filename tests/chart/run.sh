#!/usr/bin/env bash
# Chart tests: renders charts/argocd-gateway with the real Helm engine and validates every
# manifest against the Kubernetes schemas. Creates (or reuses) a venv at target/chart-venv;
# needs only python3 and PyPI. Extra arguments go to pytest (e.g. -k ha, or UPDATE_GOLDEN=1).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/target/chart-venv"
requirements="$root/tests/chart/requirements.txt"
python="${PYTHON:-python3}"

# Rebuild the venv when the pins change, not on every run.
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "chart tests: creating venv at $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$requirements"
  echo "$want" >"$stamp"
fi

cd "$root"
exec "$venv/bin/python" -m pytest tests/chart "$@"
