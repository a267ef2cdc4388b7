#!/usr/bin/env bash
# API fuzzing from the spec: schemathesis generates requests from openapi.yaml (valid and
# invalid ones, every operation, stateful sequences too) against the sessiond binary, and
# checks every answer: no 5xx, every status documented, every body and header as described.
# Then every status openapi.yaml documents must have been answered, to schemathesis or in the
# integration suite, whose statuses `cargo test` writes to the file SESSIOND_SEEN_STATUSES
# names (the suite can arrange what random requests cannot, like a store outage for 503).
# Installs schemathesis from PyPI when it is missing.
# Usage: SESSIOND_SEEN_STATUSES=FILE scripts/api-fuzz.sh [BINARY] (seed: SCHEMATHESIS_SEED).
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/debug/sessiond}"
[ -x "$binary" ] || cargo build --locked
version="4.32.5"
python3 -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$version')" 2>/dev/null \
  || python3 -m pip install --quiet "schemathesis==$version"

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

export SESSIOND_ADMIN_TOKEN="api-fuzz-admin-token-0123456789"
start_sessiond fuzzed "$binary" --config tests/schemathesis/sessiond.toml
port="$(port_of fuzzed)"

export SCHEMATHESIS_HOOKS="$PWD/tests/schemathesis/hooks.py"
python3 -m schemathesis.cli --config-file tests/schemathesis/schemathesis.toml run openapi.yaml \
  --url "http://127.0.0.1:$port" --checks all --seed "${SCHEMATHESIS_SEED:-20261124}" \
  --report vcr --report-dir "$work/report"
python3 tests/schemathesis/statuses.py openapi.yaml "${SESSIOND_SEEN_STATUSES:?names the file of the statuses the suite saw}" \
  "$work"/report/*.yaml
# actix-web logs a request it cannot parse at all (a header no HTTP allows) as an error; that
# is the caller's, answered 400. Any other error, or any panic, is sessiond's.
if grep '"level":"ERROR"\|panicked' "$work/fuzzed.log" | grep -v 'request parse error'; then
  echo "sessiond logged the error or panic above during the run" >&2
  exit 1
fi
echo "API fuzzing passed: no failures, every documented status reached"
