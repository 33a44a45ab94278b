#!/usr/bin/env bash
# Runs every test: WebSocket conformance (Autobahn), then unit, integration (real server on 127.0.0.1:0), property
# tests, examples and the benches once each. Ends with one line summing up the Rust tests.
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/autobahn.sh
mkdir -p target
cargo test --locked --all-targets 2>&1 | tee target/test-output.txt
sum() { grep -E '^test result: ' target/test-output.txt | sed -E "s/.* ([0-9]+) $1.*/\1/" | awk '{s += $1} END {print s + 0}'; }
echo "total: $(sum passed) passed, $(sum failed) failed"
