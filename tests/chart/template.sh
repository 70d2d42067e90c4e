#!/usr/bin/env bash
# Renders the Helm chart like `helm template`, with the same Helm engine the chart tests use (no
# `helm` binary needed): bash tests/chart/template.sh [RELEASE] [--namespace NS] [-f FILE]
# [--set K=V] [--set-string K=V] [--set-file K=PATH] [--show-only templates/X.yaml]. Makes (or
# reuses) the chart tests' virtualenv at target/chart-venv on first use.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="$(bash "$root/tests/chart/venv.sh")"
exec "$python" "$root/tests/chart/template.py" "$@"
