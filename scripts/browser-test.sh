#!/usr/bin/env bash
# The browser package's checks (clients/js), in headless Chromium with playwright-core:
#   - the committed script-tag build sessiond.js is what src/ builds, and the size budget;
#   - `npm pack` installed into a fresh project beside the real OpenTelemetry, Faro and Sentry
#     packages: every entry point imported in Node (server-side rendering), and the
#     instruments' test page type-checked and bundled (test/package.mjs);
#   - the instruments' end-to-end test against the sessiond binary on a redis-server started
#     here (test/instruments.mjs);
#   - the demo page's end-to-end test (test/e2e.mjs) against the binary with demo = true and
#     an idle timeout of 2 s, leaving a screenshot of the demo page in target/e2e/demo.png.
# Installs Debian's chromium and the npm packages of clients/js when they are missing.
# Usage: scripts/browser-test.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/debug/sessiond}"
[ -x "$binary" ] || cargo build --locked
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
[ -x /usr/bin/chromium ] || apt_install chromium
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm test)

redis-server --port 0 --unixsocket "$work/redis.sock" --save '' --appendonly no --dir "$work" \
  >/dev/null 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do [ -S "$work/redis.sock" ] && break; sleep 0.05; done
SESSIOND="$binary" REDIS_URL="redis+unix://$work/redis.sock" node clients/js/test/instruments.mjs

cat >"$work/sessiond.toml" <<'TOML'
demo = true

[namespaces.default]
idle_timeout = "2s"
TOML
start_sessiond demo "$binary" --config "$work/sessiond.toml"
port="$(port_of demo)"
BASE_URL="http://127.0.0.1:$port" IDLE_MS=2000 SCREENSHOT=target/e2e/demo.png \
  node clients/js/test/e2e.mjs
echo "browser tests passed; screenshot: target/e2e/demo.png"
