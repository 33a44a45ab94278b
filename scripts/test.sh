#!/usr/bin/env bash
# Runs every test: WebSocket conformance (Autobahn), unit, integration (real server on 127.0.0.1:0), property,
# doc and example builds.
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/autobahn.sh
cargo test --locked --all-targets
cargo test --locked --doc
