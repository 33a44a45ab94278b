#!/usr/bin/env bash
# Tests of the browser client and the demo page: Node's test runner against a real server process, and two pages
# in headless Chromium (Debian's package, driven by playwright-core: no browser download). Installs what it needs:
# chromium through apt-get when /usr/bin/chromium is missing, the npm packages from package-lock.json.
# Usage: ./scripts/browser-test.sh   (CHROMIUM=/path/to/chromium to use another build)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  SUDO=()
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=(sudo); fi
  echo "installing chromium (apt-get)..."
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm ci --no-audit --no-fund
fi
cargo build --locked --bin coworker
node --test --test-timeout=120000 tests/browser/
