#!/usr/bin/env bash
# The conformance matrix: real systemd behaviours (Restart= policies, start limits, service
# types, ways to die, operators and tools) run against a sandboxed real systemd of each version,
# with crashwatch's verdicts checked against systemd's own account and against a replay of the
# same journal. See tests/conformance/main.rs.
#
#   scripts/conformance.sh                                 # every case, every version
#   scripts/conformance.sh --systemd 252 --case Restart=   # a subset
#   scripts/conformance.sh --jobs 4 --write CONFORMANCE.md
#
# Options (all passed to the runner):
#   --systemd 252,254,257   versions to run (default: all)
#   --case SUBSTRING        only cases whose name contains it (case-insensitive)
#   --jobs N                cases at a time, each in its own sandbox (default 3)
#   --write FILE            also write the table and each case's reasoning as Markdown
#
# Needs root (a private systemd in namespaces) and journalctl. Without root every case is
# skipped with the reason; with CI=true a case that cannot run is a failure. The last line is
# `N passed, N failed[, N skipped]`; the exit status is non-zero on any failure.
# Environment: CI=true (strict), CRASHWATCH_TEST_KEEP=1 (keep sandbox directories).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

locked=()
if [ -f Cargo.lock ]; then locked=(--locked); fi
exec cargo test "${locked[@]}" --test conformance -- "$@"
