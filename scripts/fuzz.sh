#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 30 s each): the parsers that take outside
# input (configuration files, property-change sequences, Upstart hook messages).
#
#   scripts/fuzz.sh [SECONDS]
#
# cargo-fuzz is installed when missing. It drives libFuzzer through rustc's -Z flags; on a stable
# toolchain RUSTC_BOOTSTRAP=1 allows them. Sanitizers are off: the stable toolchain ships no
# sanitizer runtime, and the targets look for panics and broken invariants, not memory errors.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
cd fuzz
for target in $(cargo fuzz list); do
  printf '==> fuzzing %s for %s s\n' "$target" "$seconds"
  mkdir -p "corpus/$target"
  cargo fuzz run --sanitizer none "$target" "corpus/$target" -- -max_total_time="$seconds" 2>&1 | tail -n 2
done
