#!/usr/bin/env bash
# Runs every test: WebSocket conformance (Autobahn), then unit, integration (real server on 127.0.0.1:0), property
# tests, examples and the benches once each, then the browser client and the demo page (Node's test runner and
# headless Chromium; installs chromium and the npm packages when missing). Ends with one line summing them up.
# The PostgreSQL tests use the server at COWORKER_TEST_DATABASE_URL when one answers there, and otherwise a
# throwaway cluster that scripts/postgres.sh installs and starts (and this script stops at the end).
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
read -r COWORKER_TEST_DATABASE_URL PG_DIR < <(./scripts/postgres.sh start | tail -1)
[ -n "${COWORKER_TEST_DATABASE_URL:-}" ] || { echo "no PostgreSQL for the tests (scripts/postgres.sh failed)" >&2; exit 1; }
export COWORKER_TEST_DATABASE_URL
if [ -n "${PG_DIR:-}" ]; then trap './scripts/postgres.sh stop "$PG_DIR"' EXIT; fi
./scripts/autobahn.sh
mkdir -p target
cargo test --locked --all-targets 2>&1 | tee target/test-output.txt
# The README's first command: `cargo run` must pick the server among the crate's binaries.
cargo run --locked --quiet -- --version | grep -q '^coworker ' || { echo "cargo run does not start the server" >&2; exit 1; }
./scripts/browser-test.sh 2>&1 | tee target/browser-test-output.txt
sum() { grep -E '^test result: ' target/test-output.txt | sed -E "s/.* ([0-9]+) $1.*/\1/" | awk '{s += $1} END {print s + 0}'; }
node_sum() { grep -E "^# $1 [0-9]+$" target/browser-test-output.txt | awk '{s += $3} END {print s + 0}'; }
echo "total: $(( $(sum passed) + $(node_sum pass) )) passed, $(( $(sum failed) + $(node_sum fail) )) failed"
