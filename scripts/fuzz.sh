#!/usr/bin/env bash
# Runs the request fuzz target (fuzz/fuzz_targets/request.rs) for a bounded time, from the
# committed corpus and the hand-written seeds, with cargo-fuzz and libFuzzer. New finds go to
# a temporary directory, so the committed corpus changes only when someone minimizes it in.
# Installs cargo-fuzz when it is missing. Usage: scripts/fuzz.sh [SECONDS] (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# cargo-fuzz passes sanitizer flags that rustc accepts only on nightly; this machine's one
# toolchain is stable, and RUSTC_BOOTSTRAP lets it take them.
export RUSTC_BOOTSTRAP=1
cargo fuzz build request
cargo fuzz run request "$work" fuzz/corpus/request fuzz/seeds -- \
  -max_total_time="$seconds" -max_len=384 -print_final_stats=1
echo "fuzzing found nothing in ${seconds}s"
