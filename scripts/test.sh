#!/usr/bin/env bash
# Installs what the tests need when it is missing (redis-server, and redis-cli to form a
# cluster; k6 for the smoke; kubernetes-validate and hadolint for deploy/), then runs every
# check: formatting, clippy with warnings as errors, all tests (unit and integration, every
# store, against a redis-server and a Redis Cluster the harness starts itself), the deploy/
# manifests and Dockerfile, the k6 smoke script against the built binary, and the
# request fuzz target for a minute (installing cargo-fuzz when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  apt_install redis-server redis-tools
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The statuses the integration suite sees, for the API fuzzing's reachability check.
export SESSIOND_SEEN_STATUSES="$work/seen-statuses"
cargo test --locked
bash scripts/deploy-check.sh
bash scripts/smoke.sh target/debug/sessiond
bash scripts/api-fuzz.sh target/debug/sessiond
bash scripts/browser-test.sh target/debug/sessiond
bash scripts/fuzz.sh 60
