#!/usr/bin/env bash
# Creates (or reuses) the chart tests' virtualenv at target/chart-venv and prints its python.
# Used by run.sh and by the Rust tests that render the chart. Needs only python3 and PyPI.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/target/chart-venv"

# shellcheck source=../venv.sh
source "$root/tests/venv.sh"
ensure_venv "$venv" "$root/tests/chart/requirements.txt"
echo "$venv/bin/python"
