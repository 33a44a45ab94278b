#!/usr/bin/env bash
# Runs one attack of examples/attack_probe.rs against a server binary, on a fresh server of its own (a new
# temporary data dir and a free loopback port), and stops that server afterwards, by its pid.
#   scripts/attack-probe.sh BINARY ATTACK [probe flags, e.g. --json or --runs N]
# Auth attacks (tenancy spaces revocation jwt) start the server with --jwt-secret; memory1/memory24 add
# --max-state-bytes 268435456 when the binary knows that flag. Build the probe first:
#   cargo build --release --example attack_probe
# Before/after, for example:
#   for a in trail acks tenancy spaces revocation jwt rebinding resync resync7 skip memory1 memory24; do
#     for b in OLD_BINARY target/release/coworker; do scripts/attack-probe.sh "$b" "$a"; done; done
set -u
BIN=$1; ATTACK=$2; shift 2
PROBE=${PROBE:-$(dirname "$0")/../target/release/examples/attack_probe}
SECRET=probe-secret-0123456789abcdef
DIR=$(mktemp -d "${TMPDIR:-/tmp}/attack-probe.XXXXXX")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
FLAGS=(--listen "127.0.0.1:$PORT" --data-dir "$DIR" --web-root /nonexistent)
AUTH=()
case $ATTACK in
  tenancy|spaces|revocation|jwt) FLAGS+=(--jwt-secret "$SECRET"); AUTH=(--secret "$SECRET");;
  memory1|memory24) if "$BIN" --help | grep -q -- --max-state-bytes; then FLAGS+=(--max-state-bytes 268435456); fi;;
esac
"$BIN" "${FLAGS[@]}" >"$DIR/server.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null; sleep 0.5; kill -9 "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
echo "# $(basename "$BIN") $ATTACK: server flags: ${FLAGS[*]}" >&2
"$PROBE" --url "ws://127.0.0.1:$PORT/ws" --pid "$PID" --data-dir "$DIR" "${AUTH[@]}" "$@" "$ATTACK"
