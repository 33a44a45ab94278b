#!/usr/bin/env bash
# Counts the server's user-space instructions per produced token under a fixed load, with callgrind. Unlike CPU
# time on this shared machine (±20 % between runs), the count moves about ±2 % between runs, so two builds can be
# compared one after the other: run it on each and compare the last line. It does not see the kernel (syscalls,
# TCP), cache misses or memory stalls, so it complements `scripts/bench.sh`, it does not replace it.
#
# Usage: ./scripts/instructions.sh [SERVER_BINARY] [coworker-load flags...]
#        default binary target/release/coworker; default load 100 runs x 20 tokens/s x 10 subscribers (slow enough
#        for the server to keep up under valgrind).
# Needs: valgrind (installed with apt-get when missing), curl.
# With CG_OUT=FILE set, the callgrind profile is kept there (for callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/coworker}
shift || true
LOAD_FLAGS=("$@")
if [ ${#LOAD_FLAGS[@]} -eq 0 ]; then LOAD_FLAGS=(--scenario ai --runs 100 --rate 20 --subscribers 10); fi
if ! command -v valgrind >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq valgrind
fi
cargo build --release --locked --bin coworker --bin coworker-load >&2
PORT=18099
TMP=$(mktemp -d)
trap 'kill "$VG" 2>/dev/null || true; rm -rf "$TMP"' EXIT
ulimit -n "$(ulimit -Hn)"

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.out" \
  "$BIN" --listen "127.0.0.1:$PORT" --data-dir "$TMP/data" >"$TMP/server.log" 2>&1 &
VG=$!
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.1
done
# Patches the server applied so far: it times one patch in 64 for /metrics, so the count is known to ±64.
patches() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '$1 == "coworker_patch_seconds_count" {print $2 * 64}'; }

target/release/coworker-load --url "ws://127.0.0.1:$PORT/ws" --json --duration 12 "${LOAD_FLAGS[@]}" >"$TMP/load.json" &
LOAD=$!
sleep 4                                  # connections, subscriptions and runs are set up; streaming is steady
callgrind_control -i on "$VG" >/dev/null
P0=$(patches)
sleep 6
callgrind_control -i off "$VG" >/dev/null
P1=$(patches)
wait "$LOAD" || { echo "instructions: the load run failed" >&2; exit 1; }
callgrind_control -d "$VG" >/dev/null
sleep 1
IR=$(cat "$TMP"/cg.out* | awk '$1 == "totals:" {s += $2} END {print s}')
if [ -n "${CG_OUT:-}" ]; then cat "$TMP"/cg.out* >"$CG_OUT"; fi
kill "$VG" 2>/dev/null || true
wait "$VG" 2>/dev/null || true
python3 - "$TMP/load.json" "$IR" "$P0" "$P1" "${LOAD_FLAGS[*]}" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))
ir, p0, p1 = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"load: {sys.argv[5]} (ok: {load['ok']})")
print(f"window: {p1 - p0:.0f} patches, {ir:,} user-space instructions")
print(f"instructions per produced token: {ir / (p1 - p0):,.0f}")
PY
