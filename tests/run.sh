#!/usr/bin/env bash
# The README's test command: every Rust test binary (`cargo test --locked --no-fail-fast`, so one
# failing binary does not hide the others), then the Helm chart tests — both always run, and the
# script fails at the end if either did, naming which. Extra arguments go to `cargo test`.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

failed=()
cargo test --locked --no-fail-fast "$@" || failed+=("cargo test (see the failures listed above)")
bash tests/chart/run.sh || failed+=("the chart tests (bash tests/chart/run.sh)")

if ((${#failed[@]})); then
  printf '\nFAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
printf '\nall tests passed\n'
