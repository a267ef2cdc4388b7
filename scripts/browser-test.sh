#!/usr/bin/env bash
# The browser client's end-to-end test (clients/js/test/e2e.mjs) in headless Chromium, with
# playwright-core, against the demo page of the sessiond binary (demo = true, idle timeout
# 2 s). Installs Debian's chromium and the npm packages of clients/js when they are missing.
# Leaves a screenshot of the demo page in target/e2e/demo.png.
# Usage: scripts/browser-test.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/debug/sessiond}"
[ -x "$binary" ] || cargo build --locked
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
[ -x /usr/bin/chromium ] || apt_install chromium
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error)

cat >"$work/sessiond.toml" <<'TOML'
demo = true

[namespaces.default]
idle_timeout = "2s"
TOML
start_sessiond demo "$binary" --config "$work/sessiond.toml"
port="$(port_of demo)"
BASE_URL="http://127.0.0.1:$port" IDLE_MS=2000 SCREENSHOT=target/e2e/demo.png \
  node clients/js/test/e2e.mjs
echo "browser test passed; screenshot: target/e2e/demo.png"
