#!/usr/bin/env bash
# Runs every test: WebSocket conformance (Autobahn), then unit, integration (real server on 127.0.0.1:0), property
# tests, examples and the benches once each, then the browser client and the demo page (Node's test runner and
# headless Chromium; installs chromium and the npm packages when missing). Ends with one line summing them up.
# The PostgreSQL tests use the server at COWORKER_TEST_DATABASE_URL when one answers there, and otherwise a
# throwaway cluster that scripts/postgres.sh installs and starts (and this script stops at the end). The cluster
# tests start their own nats-server (JetStream, free ports, temporary stores): Debian's `nats-server` package is
# installed when the binary is missing.
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
read -r COWORKER_TEST_DATABASE_URL PG_DIR < <(./scripts/postgres.sh start | tail -1)
[ -n "${COWORKER_TEST_DATABASE_URL:-}" ] || { echo "no PostgreSQL for the tests (scripts/postgres.sh failed)" >&2; exit 1; }
export COWORKER_TEST_DATABASE_URL
if [ -n "${PG_DIR:-}" ]; then trap './scripts/postgres.sh stop "$PG_DIR"' EXIT; fi
export PATH="$PATH:/usr/sbin"
if ! command -v nats-server >/dev/null; then
  echo "test: installing the nats-server package" >&2
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >&2
fi
./scripts/autobahn.sh
mkdir -p target
cargo test --locked --all-targets 2>&1 | tee target/test-output.txt
# The README's first command: `cargo run` must pick the server among the crate's binaries.
cargo run --locked --quiet -- --version | grep -q '^coworker ' || { echo "cargo run does not start the server" >&2; exit 1; }
./scripts/browser-test.sh 2>&1 | tee target/browser-test-output.txt
sum() { grep -E '^test result: ' target/test-output.txt | sed -E "s/.* ([0-9]+) $1.*/\1/" | awk '{s += $1} END {print s + 0}'; }
node_sum() { grep -E "^# $1 [0-9]+$" target/browser-test-output.txt | awk '{s += $3} END {print s + 0}'; }
echo "total: $(( $(sum passed) + $(node_sum pass) )) passed, $(( $(sum failed) + $(node_sum fail) )) failed"
